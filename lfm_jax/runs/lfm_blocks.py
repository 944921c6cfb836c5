"""Local Flow Matching: the block loop, its files under <workdir>/blocks/<n>, and resume.

`train_blocks(config, dataset, workdir)` trains blocks n = 1..N in turn. Block n:
  1. its OU pairs come from x_l ~ q_{n-1}, the training set pushed through the
     trained blocks 1..n-1 (on device: `lfm.make_sample_batch`, and the loss
     `flow_matching.make_loss(..., lfm.ou_pairs)`, flow matching on the OU pair);
  2. it trains with `train.make_train_step` / `train.fit` (fused steps, orbax
     checkpoints in blocks/<n>/ckpt, per-step keys fold_in(key_n, step), losses in
     blocks/<n>/loss.jsonl);
  3. its artefacts go to one orbax composite checkpoint, blocks/<n>/artefacts
     (`block_store.BlockArtefacts`), each as soon as it is computed: its final params
     (raw and EMA), then the training set pushed through it (chunks sharded over the
     mesh; the last block trains nothing after it, so only the first max(lfm.n_val,
     one device call of lfm.chunk_size rows per device) training rows go through it,
     for its report's moment check), then the validation subset pushed through it
     with its cumulative log-determinant, and its report (`lfm_reports.block_report`).
Orbax commits every version of the composite atomically (a temporary folder renamed
when complete; an unfinished one is removed on the next start), so a run killed at
any moment and restarted with the same command restores blocks < n with their pushed
data (only what is missing is recomputed: a block killed during its push restarts
the push from its saved params, or from its final train checkpoint without training
again) and resumes inside block n from its latest checkpoint, ending with the same
params as an uninterrupted run. An artefact damaged afterwards (a truncated, garbled
or deleted file; arrays carry a CRC-32) is reported with a warning naming it, its
version is set aside as `<version>.damaged`, and it is rebuilt: pushed data and
reports are recomputed, params restored from the block's checkpoint (or, without
one, the block is retrained). Every process of a multi-process run takes part in
these saves and restores (orbax's are collective).

Each block's training time and steps add up across restarts
(`provenance.TrainClock`, blocks/<n>/train_clock.json): its report's `train_time_s`
is the total over every start and `steps_trained` its final step.

Failed ODE solves: the training-set push must be complete, so a failure there raises
`lfm_parts.PushFailedError` naming the block and how many points failed; the validation points
are solved with on_failure="nan", and the failed ones are left out of the block's
validation NLL and counted (`val_n_failed`).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from lfm_jax import checkpoint, distributed, lfm, phases
from lfm_jax import logging as log_lib
from lfm_jax import train
from lfm_jax.runs import block_store, common, data_feed, lfm_reports, provenance
from lfm_jax.runs.lfm_parts import (BlockFiles, block_data, block_timing, make_trainer,
                                    push_training_data)


# ---------------------------------------------------------------------- training

def train_blocks(config, dataset, workdir: str, *, mesh=None, trainer=None, callback=None,
                 verbose: bool = True, block_train_budget_s=None, clock=None):
    """Train all blocks (resuming where the workdir left off).

    Args:
      config: a full config (sections lfm, train, model, eval).
      dataset: `data.Dataset` (train, val arrays (n, d); optional log_prob).
      workdir: output directory; blocks/<n>/ holds block n's files.
      mesh: device mesh (default from config.train.num_devices).
      trainer: `make_trainer(config, ...)` (default: built here).
      callback: optional f(block, step, metrics) after every fused call (e.g. to
        stop a run for tests by raising).
      clock: optional `phases.PhaseClock`: the phases "train", "push", "block val NLL"
        and "block reports", summed over the blocks.
      block_train_budget_s: optional wall-clock limit (seconds) on each block's
        training (not its push): the block stops after the first fused call that ends
        past it, or at steps_per_block (the lr schedule spans steps_per_block). For
        equal-time comparisons; the steps run are in the block's report.
    Returns:
      (model, params_list, reports): the LocalFlow (push options), the model params of
      each block (EMA if config.eval.use_ema), and the per-block report dicts.
    """
    c = config.lfm
    mesh = common.make_mesh(config) if mesh is None else mesh
    example_shape = tuple(dataset.train.shape[1:])
    if trainer is None:
        trainer = make_trainer(config, example_shape, mesh,
                               data_feed.fresh_sampler(config, dataset))
    network, model = trainer.network, trainer.model
    init_key, train_key, div_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    template = network.init(init_key)

    x_train = np.asarray(dataset.train)
    # class-conditional blocks: labels ride along (training batches, pushes); the
    # validation points go through the null-class (marginal) field
    y_train = (None if getattr(network, "num_classes", None) is None
               else np.asarray(dataset.train_labels, np.int32))
    x_val = np.asarray(dataset.val[: c.n_val])
    val_logdet = np.zeros(len(x_val), np.float64)
    log_p_val = None
    if dataset.log_prob is not None:
        log_p_val = np.asarray(jax.jit(jax.vmap(dataset.log_prob))(x_val), np.float64)
    hs = model.step_sizes
    cum_h = lfm.cumulative_ou_time(hs)
    reports = [lfm_reports.initial_report(model, x_val, log_p_val, mesh)]
    params_list, raw_prev = [], None

    for n in range(1, model.num_blocks + 1):
        files = BlockFiles(workdir, n)
        # every artefact is loaded, or computed and saved as soon as it is; a damaged
        # one is set aside with a warning and recomputed (params: restored from the
        # block's final checkpoint, or retrained without one)
        with block_store.BlockArtefacts(workdir, n) as store:
            saved = store.params(template, recover=True)
            if saved is None:
                if c.warm_start and raw_prev is not None:
                    init = raw_prev
                else:
                    init = network.init(jax.random.fold_in(init_key, n))
                with phases.phase(clock, "train"):
                    saved, _ = _train_one_block(
                        n, hs[n - 1], x_train, init, trainer, files, config,
                        jax.random.fold_in(train_key, n), mesh, callback, verbose,
                        block_train_budget_s, x_val, y_train)
                store.save(params=saved)
            timing = block_timing(files)
            raw_prev = saved["params"]
            params = saved["ema_params"] if config.eval.use_ema else saved["params"]
            params_list.append(params)

            t0 = time.perf_counter()
            # the last block's push trains nothing: only the rows its report checks,
            # but at least one full device call (chunk_size rows a device), so that the
            # push program compiled for the earlier blocks is reused (a smaller call is
            # a new shape: a recompilation that costs more than the rows on a GPU)
            n_last = max(c.n_val, c.chunk_size * mesh.shape[distributed.DATA_AXIS])
            x_push = x_train if n < model.num_blocks else x_train[:n_last]
            x_next = store.train_pushed(x_push.shape, recover=True)
            if x_next is None:
                with phases.phase(clock, "push"):
                    x_next = push_training_data(
                        model, params, x_push, n, mesh=mesh, network=network,
                        labels=None if y_train is None else y_train[: len(x_push)])
                store.save(train_pushed=x_next)
            push_time = time.perf_counter() - t0
            t0 = time.perf_counter()
            val = store.val_pushed(x_val.shape, recover=True)
            new_val = val is None
            if new_val:
                # a failed validation point is NaN (left out of the val NLL and counted
                # as val_n_failed), not the end of the run.
                with phases.phase(clock, "block val NLL"):
                    v_next, delta = model.block_log_det(
                        params, x_val, method=c.divergence, n_probes=c.n_probes,
                        key=jax.random.fold_in(div_key, n), mesh=mesh)
                val = (v_next, val_logdet + delta)
            v_next, v_logdet = val
            val_time = time.perf_counter() - t0

            report = store.report(recover=True)
            if report is None:
                losses = log_lib.read_jsonl(files.loss) if os.path.exists(files.loss) else []
                with phases.phase(clock, "block reports"):
                    report = lfm_reports.block_report(
                        model, n, cum_h[n], x_push, x_next, v_next, v_logdet, log_p_val,
                        losses, mesh)
                # push_time_s: the training set through the block (part of LFM
                # training); val_logdet_time_s: the validation points and their log-det
                # (evaluation).
                report.update(timing, push_time_s=push_time, val_logdet_time_s=val_time)
                report = log_lib.to_python(report)
                store.save(val_pushed=val if new_val else None, report=report)
            elif new_val:
                store.save(val_pushed=val)
        reports.append(report)
        if verbose:
            print(lfm_reports.format_report(report), flush=True)
        x_train, x_val, val_logdet = x_next, v_next, v_logdet
    return model, params_list, reports


def _train_one_block(n, h, x_l, init_params, trainer, files, config, key, mesh,
                     user_callback, verbose, budget_s=None, x_val=None, y=None):
    """Train block n from init_params (or its latest checkpoint); returns
    ({"params", "ema_params"} on the host, final step). With budget_s, stops after the
    first fused call that ends past budget_s seconds. The block's train clock
    (files.clock) is saved after every fused call and at the end. Block 1 draws fresh
    data when the trainer has a `first_step_fn`; with config.train.keep_best, the
    params of the lowest validation loss on x_val (pushed validation points) are
    returned."""
    t_cfg = config.train
    steps = config.lfm.steps_per_block
    step_fn = trainer.first_step_fn if n == 1 and trainer.first_step_fn else trainer.step_fn
    keeper = None if x_val is None or y is not None else data_feed.make_keep_best(
        config, trainer.loss_fn, data_feed.lfm_val_batch(x_val, h))
    state = train.create_train_state(key, init_params, trainer.optimizer)
    state = distributed.replicate(state, mesh)
    clock = provenance.TrainClock(files.clock)
    ckpt = checkpoint.Checkpointer(files.ckpt, save_every=t_cfg.checkpoint_every,
                                   keep=t_cfg.keep_checkpoints)
    try:
        state = ckpt.restore(state)
        start = int(state.step)
        log_lib.truncate_jsonl(files.loss, start)
        writer = log_lib.MetricsWriter(files.loss)
        if start and verbose:
            print(f"block {n}: resuming from step {start} in {files.ckpt}", flush=True)

        board = common.tracker(config, files.dir, purge_step=start or None)
        callback = common.logging_callback(
            writer, board, common.lr_schedule(config, steps), clock,
            None if user_callback is None else lambda step, m: user_callback(n, step, m))

        data = block_data(config, n, x_l, h, y, mesh)
        progress = log_lib.Progress(steps, initial=start, desc=f"lfm block {n}",
                                    disable=None if verbose else True)
        spc = t_cfg.steps_per_call
        try:
            if budget_s is None:
                state, _ = train.fit(state, step_fn, data, steps, steps_per_call=spc,
                                     callback=callback, checkpointer=ckpt,
                                     progress=progress, keep_best=keeper)
            else:
                t0 = time.perf_counter()
                step = int(state.step)
                while step < steps and time.perf_counter() - t0 < budget_s:
                    step = min(steps, step + spc)
                    state, _ = train.fit(state, step_fn, data, step, steps_per_call=spc,
                                         callback=callback, progress=progress,
                                         keep_best=keeper)
                ckpt.save(int(state.step), state, force=True)
                ckpt.wait()
        finally:
            progress.close()
            board.close()
    finally:
        ckpt.close()
    clock.save(int(state.step))
    state = keeper.apply(state) if keeper is not None else state
    return (jax.device_get({"params": state.params, "ema_params": state.ema_params}),
            int(state.step))
