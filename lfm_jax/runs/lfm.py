"""Local Flow Matching job: train the blocks (resumable), evaluate, write artefacts.

`run(config, workdir)` is the `experiments.train` entry: validates and records the
config (`jobs.job`), trains the blocks (`lfm_blocks.train_blocks`, resumable), then
writes metrics.json (test NLL in nats and bits/dim, the NLL floor where known, energy
distance / MMD / sliced W2 of samples against test data, per-block reports,
train_time_s summed over every start, and "warnings": a block that left the
validation NLL worse than before it, a final model worse than the base N(0, I)),
metrics.jsonl (every block's training losses, one after another: "step" counts over
all blocks, "block" and "block_step" say where), samples.png, loss.png,
block_nll.png and, where the data density is known, chi_square.png. Images: with
config.eval.classifier_workdir and / or config.eval.inception_weights, the scores of
guided samples per weight (`image_eval.sample_scores`: fd_classifier_w<w> (NOT
Inception FID), accuracy_w<w>, best_w; fid_inception_w<w> (standard FID, pytorch-fid);
samples_w<w>.npz).

Evaluation solves with config.eval.ode and on_failure="nan": test points and samples
whose solve fails (e.g. an adaptive solve exhausting max_steps on a stiff stretch of a
long-trained field) are left out and counted (`n_failed`, `n_samples_failed` in
metrics.json) with a printed warning (`common.warn_failed`), so a few bad points do
not end a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np

from lfm_jax import files, lfm, networks, phases, plots
from lfm_jax import logging as log_lib
from lfm_jax.runs import common, image_data, image_eval, jobs, lfm_blocks, lfm_parts


def eval_model(config, model: lfm.LocalFlow) -> lfm.LocalFlow:
    """The same blocks with the evaluation ODE (config.eval.ode, on_failure="nan") and
    config.eval.chunk_size (test NLL, sampling)."""
    return dataclasses.replace(model, ode=common.eval_ode_options(config),
                               chunk_size=config.eval.chunk_size)


@jobs.job
def run(config, workdir: str, clock=None) -> dict:
    """Train (resumable), evaluate, and write metrics.json and plots to workdir (clock:
    the `phases.PhaseClock` of the run's phases)."""
    with phases.phase(clock, "data"):
        dataset = common.load_data(config)
    image_data.check_classes(config, dataset)
    mesh = common.make_mesh(config)
    model, params_list, reports = lfm_blocks.train_blocks(config, dataset, workdir,
                                                         mesh=mesh, clock=clock)
    # training time over every start: each block's training plus its training-set push
    train_time = sum((r.get("train_time_s") or 0.0) + (r.get("push_time_s") or 0.0)
                     for r in reports[1:])
    found = block_warnings(reports)
    for w in found:
        print(f"WARNING: {w}", flush=True)
    results = evaluate(config, model, params_list, dataset,
                       jax.random.fold_in(jax.random.PRNGKey(config.seed), 99), workdir,
                       mesh=mesh, clock=clock)
    base = jobs.gaussian_nll(dataset.test[: config.eval.nll_examples])
    results["base_test_nll"] = base
    results["warnings"] = found
    jobs.report_warnings(results, jobs.worse_than_base(results["test_nll"], base,
                                                       "the final model's test"))
    n_params = sum(networks.count_params(p) for p in params_list)
    results.update(method="lfm", num_blocks=model.num_blocks,
                   step_sizes=[None if math.isinf(h) else h for h in model.step_sizes],
                   steps=config.lfm.steps_per_block * model.num_blocks,
                   train_time_s=train_time, num_params=n_params, blocks=reports)
    with phases.phase(clock, "plots"):
        _write_curves(workdir, model, reports, results.get("nll_floor"))
    jobs.write_metrics(workdir, results, clock)
    return results


def block_warnings(reports) -> list:
    """A warning for each block n >= 1 whose validation NLL is worse than block
    n - 1's (reports[0]: the base N(0, I) alone), and for a last block worse than the
    base; the val NLLs of consecutive blocks are of the same validation points."""
    found = []
    for prev, r in zip(reports, reports[1:]):
        if not r["val_nll"] <= prev["val_nll"]:
            found.append(f"block {r['block']} left the validation NLL worse than before "
                         f"it: {prev['val_nll']:.4f} -> {r['val_nll']:.4f} nats")
    if len(reports) > 1 and not reports[-1]["val_nll"] <= reports[0]["val_nll"]:
        found.append(f"after {reports[-1]['block']} blocks the validation NLL "
                     f"{reports[-1]['val_nll']:.4f} is worse than the base N(0, I)'s "
                     f"{reports[0]['val_nll']:.4f}")
    return found


def evaluate(config, model, params_list, dataset, key, workdir, *, mesh=None,
             clock=None) -> dict:
    """Test NLL (nats, bits/dim), NLL floor, sample metrics and samples.png. The NLL
    ("test_nll") is on the config.eval.split split ("test", or "val"; eval_split)."""
    e, c = config.eval, config.lfm
    emodel = eval_model(config, model)
    k_sample, k_metric, k_div = jax.random.split(key, 3)
    # points / samples whose solve fails are NaN, counted and left out (n_failed,
    # n_samples_failed), instead of one of them ending the run.
    is_image = isinstance(dataset, image_data.ImageData)
    network, labels, n = None, None, e.n_samples
    if is_image:  # a grid: per class rows (guided, every block) for a conditional model
        network = common.velocity_network(config, model.example_shape)
        n, labels = image_eval.sample_labels(network, e.grid_per_class)
    z = jax.random.normal(k_sample, (n,) + tuple(model.example_shape))
    t0 = time.perf_counter()
    with phases.phase(clock, "sampling"):
        samples = image_eval.lfm_generate(emodel, network, params_list, z, labels,
                                          e.guidance_w, mesh=mesh)
    sample_time = time.perf_counter() - t0
    split = e.get("split", "test")  # "val": the MAF validation split (the paper's)
    test = np.asarray(getattr(dataset, split)[: e.nll_examples])
    t0 = time.perf_counter()
    with phases.phase(clock, "NLL"):
        lp = emodel.log_prob(params_list, test, method=e.divergence, n_probes=c.n_probes,
                             key=k_div if e.divergence != "exact" else None, mesh=mesh)
    nll_time = time.perf_counter() - t0
    with phases.phase(clock, "sample metrics and plots"):
        if is_image:
            results = image_eval.summary(
                lp, samples, dataset, workdir, f"LFM, {model.num_blocks} blocks, test "
                f"{{test_bpd:.3f}} bits/dim, w = {e.guidance_w:g}", labels=labels)
            k = min(6, len(z))
            rows = slice(None, None, max(1, len(z) // k))
            image_eval.lfm_trajectory(emodel, params_list, z[rows][:k], workdir,
                                      network=network, w=e.guidance_w, mesh=mesh,
                                      labels=None if labels is None else labels[rows][:k])
        else:
            results, _ = common.evaluation_summary(
                k_metric, lp, samples, dataset, workdir,
                f"LFM, {model.num_blocks} blocks, test NLL {{test_nll:.3f}}")
    if is_image:  # eval.classifier_workdir / inception_weights: scores per guidance weight
        image_eval.sample_scores(
            results, config, network,
            lambda z, y, w: image_eval.lfm_generate(emodel, network, params_list, z, y, w,
                                                    mesh=mesh),
            jax.random.fold_in(key, 0xFD), dataset, workdir, clock=clock)
    results.update(sample_time_s=sample_time, nll_time_s=nll_time, eval_split=split)
    return results


def _write_curves(workdir, model, reports, floor) -> None:
    """metrics.jsonl and loss.png (all blocks' losses, one after another),
    block_nll.png and chi_square.png."""
    steps, losses, offset, lines, starts = [], [], 0, [], []
    for n in range(1, model.num_blocks + 1):
        if n > 1:
            starts.append(offset)
        path = lfm_parts.BlockFiles(workdir, n).loss
        recs = log_lib.read_jsonl(path) if os.path.exists(path) else []
        steps += [offset + r["step"] for r in recs]
        losses += [r["loss"] for r in recs]
        lines += [json.dumps({**r, "step": offset + r["step"], "block": n,
                              "block_step": r["step"]}) for r in recs]
        offset = steps[-1] if steps else offset
    if jax.process_index() == 0:
        files.atomic_write_bytes(os.path.join(workdir, "metrics.jsonl"),
                                 "".join(line + "\n" for line in lines).encode())
    if steps:
        plots.plot_loss(os.path.join(workdir, "loss.png"), steps, losses,
                        title="LFM training loss (blocks in turn)", boundaries=starts)
    blocks = [r["block"] for r in reports]
    plots.plot_curves(os.path.join(workdir, "block_nll.png"),
                      {"val NLL of blocks 1..n": (blocks, [r["val_nll"] for r in reports])},
                      xlabel="blocks n", ylabel="NLL (nats)", hline=floor,
                      hline_label=None if floor is None else "entropy (floor)")
    ou = [r for r in reports if r.get("cumulative_ou_time") is not None and "chi2" in r]
    base = ou[0] if ou and ou[0]["block"] == 0 else None  # q_0 = N(0, I), H = 0
    ou = [r for r in ou if r["block"] > 0]
    if ou:
        plots.plot_chi_square(
            os.path.join(workdir, "chi_square.png"),
            [r["cumulative_ou_time"] for r in ou], [r["excess_nll"] for r in ou],
            initial_excess=None if base is None else base["excess_nll"],
            chi2=[r["chi2"] for r in ou],
            excess_stderr=[r.get("excess_nll_stderr", 0.0) for r in ou],
            title="truncated LFM vs data (validation)")


