"""What the LFM block loop (`lfm_blocks.train_blocks`) is built from: the block
trainer of a config (network, model, optimiser, the jitted fused step), the paths of a
block's training files under <workdir>/blocks/<n> (its artefacts: `block_store`) and
its train clock, and the push of the training set through a trained block (which must
succeed for every point, else `PushFailedError`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, NamedTuple

import numpy as np

from lfm_jax import files as file_io
from lfm_jax import distributed, flow_matching, interpolants, lfm, networks, ode, train
from lfm_jax.runs import common, data_feed, image_data, image_eval, models


class PushFailedError(RuntimeError):
    """The ODE solve failed for some training points pushed through a block."""


# ------------------------------------------------------------------------ building

def make_step_sizes(config) -> tuple:
    """OU step sizes (h_1, ..., h_N) of config.lfm (inf marks a free block)."""
    c = config.lfm
    return lfm.step_sizes(c.num_blocks, c=c.step_c, rho=c.step_rho,
                          explicit=tuple(c.step_sizes) or None,
                          free_last_block=c.free_last_block)


def make_model(config, network, example_shape) -> lfm.LocalFlow:
    """The LocalFlow whose maps T_n are used while training (config.lfm.push_ode,
    on_failure="nan": failures are counted, then refused or left out)."""
    return lfm.LocalFlow(network.apply, make_step_sizes(config), tuple(example_shape),
                         ode=ode.options_from_config(config.lfm.push_ode, on_failure="nan"),
                         chunk_size=config.lfm.chunk_size)


class Trainer(NamedTuple):
    """What trains the blocks of one config: built once (`make_trainer`) and passed to
    `train_blocks`, so repeated jobs reuse the compiled step."""

    network: networks.Network
    model: lfm.LocalFlow
    optimizer: object
    step_fn: Callable
    loss_fn: Callable = None  # the block loss (data_feed.make_keep_best)
    first_step_fn: Callable = None  # block 1's step drawing fresh data (data_feed)


def block_data(config, n: int, x_l, h, y, mesh):
    """What block n's train step takes: the replicated {"x", "h"(, "y")} it draws its
    batches from on device, or (config.data.placement = "host") a `train.HostBatches`
    feeding each process's rows of {"x", "h" per row(, "y")} from host memory, its
    rows drawn with seed (config.seed, block n)."""
    x_l = np.asarray(x_l)
    extra = {} if y is None else {"y": y}
    if not data_feed.host_fed(config):
        return distributed.replicate({"x": x_l, "h": np.asarray(h, x_l.dtype), **extra}, mesh)
    rows = {"x": x_l, "h": np.full((len(x_l),), h, x_l.dtype), **extra}
    t_cfg = config.train
    return train.HostBatches(rows, t_cfg.batch_size, t_cfg.steps_per_call,
                             1_000 * int(config.seed) + n, mesh)


def make_trainer(config, example_shape, mesh, sampler=None) -> Trainer:
    """The network, the model, the optimiser (its schedule spans steps_per_block) and
    the jitted fused training step of one block for config; with `sampler`
    (`data_feed.fresh_sampler`), also block 1's step drawing fresh data."""
    c, t_cfg = config.lfm, config.train
    network = common.velocity_network(config, tuple(example_shape))
    opt = common.optimizer(config, total_steps=c.steps_per_block)
    labels = image_data.loss_labels(config, network)  # class-conditional blocks
    loss_fn = flow_matching.make_loss(network.apply, interpolants.get(c.interpolant),
                                      common.make_time_sampler(c), lfm.ou_pairs,
                                      times_per_pair=c.times_per_pair, labels=labels,
                                      dropout=models.uses_dropout(config))
    host = data_feed.host_fed(config)  # batches fed from the host: no sampler in the step
    step_fns = [train.make_train_step(
        loss_fn, opt,
        sample_batch=None if host and s is None else lfm.make_sample_batch(t_cfg.batch_size, s),
        steps_per_call=t_cfg.steps_per_call, ema_decay=t_cfg.ema_decay, mesh=mesh)
        for s in ([None] if sampler is None else [None, sampler])]
    return Trainer(network, make_model(config, network, example_shape), opt, step_fns[0],
                   loss_fn, step_fns[1] if sampler is not None else None)


# ------------------------------------------------------------------------- files

class BlockFiles:
    """Paths of block n's training files under workdir/blocks/<n> (created): its
    train checkpoints, loss log and train clock. Its artefacts (params, pushed data,
    report) are in `block_store.BlockArtefacts(workdir, n)`."""

    def __init__(self, workdir, n):
        self.dir = os.path.join(workdir, "blocks", str(n))
        os.makedirs(self.dir, exist_ok=True)
        self.ckpt = os.path.join(self.dir, "ckpt")
        self.loss = os.path.join(self.dir, "loss.jsonl")
        self.clock = os.path.join(self.dir, "train_clock.json")


def block_timing(files) -> dict:
    """{"train_time_s", "steps_trained"} of a block over all starts (its train clock;
    {} if it has none)."""
    clock = file_io.load_or_none(file_io.load_json, files.clock) or {}
    if "train_time_s" not in clock:
        return {}
    return {"train_time_s": clock["train_time_s"], "steps_trained": clock.get("step")}


def push_training_data(model, params, x, n: int, *, mesh=None, labels=None,
                       network=None) -> np.ndarray:
    """T_n(x) for the data that trains block n + 1; every point must succeed. With
    labels (a class-conditional network), row i moves by the field of its label.

    Solved with on_failure="nan" so that a failure is counted rather than reported as
    diffrax's bare max-steps error; any failed point raises `PushFailedError` (a NaN
    in the pushed data would poison the next block)."""
    options = dataclasses.replace(model.ode, on_failure="nan")
    if labels is None:
        x_next = dataclasses.replace(model, ode=options).block_map(params, x, mesh=mesh)
    else:  # guidance weight 1: the conditional field v(t, x, y_i)
        x_next = image_eval.guided_solve(network, params, x, labels, 1.0, 0.0, 1.0,
                                         options=options, chunk_size=model.chunk_size,
                                         mesh=mesh)
    failed = int(lfm.failed_rows(x_next).sum())
    if failed:
        raise PushFailedError(
            f"block {n}: the ODE solve failed for {failed} of {len(x_next)} training "
            f"points pushed through the block (solver {options.solver}, rtol "
            f"{options.rtol}, atol {options.atol}, max_steps {options.max_steps}); the "
            f"pushed data would contain NaN and poison block {n + 1}. Raise "
            f"lfm.push_ode.max_steps or loosen lfm.push_ode.rtol / atol.")
    return x_next
