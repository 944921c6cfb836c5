"""Pieces shared by the jobs in `lfm_jax.runs`: data, model, optimiser, evaluation,
failed-solve accounting and atomic file writes."""

from __future__ import annotations

import contextlib
import json
import math
import os

import jax.numpy as jnp
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import checkpoint, distributed, lfm, metrics, ode, plots, time_sampling
from lfm_jax import tracking
from lfm_jax import train
from lfm_jax import logging as log_lib


def load_data(config):
    """The dataset named by config.data (validated): a 2-D toy name, "gmm", "file"
    (your own .npy / .npz / .csv table at data.path, `user_data.load`: split with
    config.seed, standardised with the train statistics), a MAF tabular name, or an
    image set "digits" / "mnist" / "cifar10" (`image_data.load`)."""
    from lfm_jax.runs import image_data

    d = config.data
    if image_data.is_image_data(config):
        return image_data.load(config)
    if d.name == "file":
        from lfm_jax import user_data

        if not d.path:
            raise ValueError("config.data.name='file' needs config.data.path "
                             "(a .npy, .npz or .csv file)")
        return user_data.load(d.path, seed=config.seed)
    if d.name in getattr(data_lib, "TOY_2D", {}) or d.name == "gmm":
        kw = {"dim": d.dim, "n_components": d.n_components} if d.name == "gmm" else {}
        return data_lib.make_dataset(d.name, d.n_train, d.n_val, d.n_test, config.seed, **kw)
    from lfm_jax import tabular

    return tabular.load(d.name, d.path, seed=config.seed)


def make_time_sampler(section):
    """Time sampler of a config section with fields time_sampler, beta_a, beta_b
    (config.fm, config.lfm): uniform, or Beta(beta_a, beta_b)."""
    if section.time_sampler == "beta":
        return time_sampling.get("beta", a=section.beta_a, b=section.beta_b)
    return time_sampling.get(section.time_sampler)


def make_mesh(config):
    """Mesh over config.train.num_devices devices (0: all); checks the batch divides."""
    n = config.train.num_devices or None
    mesh = distributed.make_mesh(n)
    distributed.check_batch_size(config.train.batch_size, mesh)
    return mesh


def velocity_network(config, example_shape):
    """The config.model velocity `Network` for examples of example_shape
    (`models.network`: an MLP or a U-Net, class-conditional when
    config.model.num_classes > 0; keys a config lacks take their defaults)."""
    from lfm_jax.runs import models

    return models.network(config, example_shape, num_times=1)


def optimizer(config, total_steps=None):
    """The config.train optimiser; its schedule spans total_steps (default train.steps).
    Schedule "step" decays by train.decay_rate every train.decay_every steps."""
    t = config.train
    return train.make_optimizer(lr=lr_schedule(config, total_steps), grad_clip=t.grad_clip,
                                weight_decay=t.weight_decay)


def lr_schedule(config, total_steps=None):
    """The config.train learning-rate schedule (the one `optimizer` uses), k -> lr."""
    t = config.train
    return train.make_schedule(t.lr, t.schedule, t.warmup_steps, total_steps or t.steps,
                               decay_rate=t.get("decay_rate", 1.0),
                               decay_every=t.get("decay_every", 0))


def tracker(config, workdir: str, purge_step=None, subdir: str = ""):
    """The TensorBoard tracker of a job (`tracking.make`; no-op when config.log.tensorboard
    is off, or on processes other than 0)."""
    log = config.get("log")
    enabled = bool(log.get("tensorboard", False)) if log is not None else False
    return tracking.make(workdir, enabled=enabled, purge_step=purge_step, subdir=subdir)


def logging_callback(writer, board, schedule, clock, then=None):
    """`train.fit`'s callback(step, metrics) of the jobs: mean loss and grad norm of the
    fused call to the JSON-lines `writer` and, with the lr `schedule(step - 1)`, to the
    TensorBoard `board`; the train `clock` saved; then `then(step, metrics)` if given."""

    def callback(step, m):
        loss, gnorm = float(np.mean(m["loss"])), float(np.mean(m["grad_norm"]))
        writer.write(step, loss=loss, grad_norm=gnorm)
        board.write_scalars(step, {"train/loss": loss, "train/grad_norm": gnorm,
                                   "train/lr": float(schedule(step - 1))})
        clock.save(step)
        if then is not None:
            then(step, m)

    return callback


def resumable_fit(config, state, step_fn, train_data, workdir: str, desc: str,
                  keep_best=None):
    """Train to config.train.steps, resuming from `<workdir>/ckpt` if it holds a
    checkpoint; log mean loss and grad norm per call to `<workdir>/metrics.jsonl`
    (records past the restored step are dropped first, so each step is logged once).
    The checkpointer is closed (saves in flight finished) on any exit.

    Returns (state, training wall-clock seconds summed over every start of the run
    (`provenance.TrainClock`, `<workdir>/train_clock.json`), metrics.jsonl path).
    With keep_best (`train.KeepBest`), the returned state holds its best params."""
    from lfm_jax.runs import provenance

    t_cfg = config.train
    clock = provenance.TrainClock(os.path.join(workdir, "train_clock.json"))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "ckpt"),
                                   save_every=t_cfg.checkpoint_every,
                                   keep=t_cfg.keep_checkpoints)
    try:
        state = ckpt.restore(state)
        start = int(state.step)
        writer = log_lib.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))
        log_lib.truncate_jsonl(writer.path, start)
        if start:
            print(f"resuming from step {start} in {ckpt.directory}")

        board = tracker(config, workdir, purge_step=start or None)
        callback = logging_callback(writer, board, lr_schedule(config), clock)

        progress = log_lib.Progress(t_cfg.steps, initial=start, desc=desc)
        try:
            state, _ = train.fit(state, step_fn, train_data, t_cfg.steps,
                                 steps_per_call=t_cfg.steps_per_call, callback=callback,
                                 checkpointer=ckpt, progress=progress, keep_best=keep_best)
        finally:
            progress.close()
            board.close()
    finally:
        ckpt.close()
    state = keep_best.apply(state) if keep_best is not None else state
    return state, clock.save(int(state.step)), writer.path


def eval_ode_options(config) -> ode.Options:
    """The config.eval.ode options with on_failure="nan": evaluation counts and drops
    the points whose solve fails (`finite_nll`, `warn_failed`) instead of ending."""
    return ode.options_from_config(config.eval.ode, on_failure="nan")


ENERGY_DISTANCE_NOTE = ("energy_distance is an unbiased estimate: it fluctuates around 0 "
                        "and can be negative for a good model; energy_distance_biased is "
                        "the non-negative V-statistic (biased upwards)")


def sample_metrics(key, samples, reference, max_points: int = 2000) -> dict:
    """Energy distance (unbiased, can be < 0, and the biased non-negative one), MMD and
    sliced W2 between samples and held-out data (`ENERGY_DISTANCE_NOTE`)."""
    n = min(len(samples), len(reference), max_points)
    x = jnp.asarray(samples[:n], jnp.float32)
    y = jnp.asarray(reference[:n], jnp.float32)
    return {
        "energy_distance": float(metrics.energy_distance(x, y)),
        "energy_distance_biased": float(metrics.energy_distance(x, y, biased=True)),
        "mmd": float(metrics.mmd(x, y)),
        "sliced_w2": float(metrics.sliced_wasserstein(key, x, y)),
    }


def evaluation_summary(key, log_q, samples, dataset, workdir: str, title: str):
    """The evaluation results shared by the jobs, and samples.png.

    log_q (n,): test log-likelihoods (nats) from solves with on_failure="nan";
    samples (m, ...): generated samples, failed rows NaN. Failed points and samples are
    left out and counted, with a warning (`warn_failed`). Returns (results, the
    finite samples): results hold test_nll, test_nll_stderr, test_bpd, n_failed,
    nll_examples, n_samples_failed, dim, nll_floor (where known) and, when any sample
    succeeded, the `sample_metrics` against dataset.test (then samples.png is drawn,
    titled title.format(**results), and for d > 2 pairs.png, a pair plot of the first
    four coordinates).
    """
    nll, nll_se, n_failed = finite_nll(log_q)
    warn_failed(n_failed, len(log_q), "test points")
    samples = np.asarray(samples)
    bad = lfm.failed_rows(samples)
    warn_failed(int(bad.sum()), len(samples), "generated samples")
    results = {
        "test_nll": nll,
        "test_nll_stderr": nll_se,
        "test_bpd": float(metrics.bits_per_dim(nll, dataset.dim)),
        "n_failed": n_failed,
        "nll_examples": int(len(log_q)),
        "n_samples_failed": int(bad.sum()),
        "dim": int(dataset.dim),
    }
    floor = metrics.entropy_floor(dataset)
    if floor is not None:
        results["nll_floor"] = float(floor)
    samples = samples[~bad]
    if len(samples):  # else nothing to measure or plot; the NLL metrics still count
        test = np.asarray(dataset.test)
        results.update(sample_metrics(key, samples, test),
                       notes={"energy_distance": ENERGY_DISTANCE_NOTE})
        plots.plot_samples(os.path.join(workdir, "samples.png"), samples, data=test,
                           title=title.format(**results))
        if samples.ndim == 2 and samples.shape[1] > 2:  # d > 2: the first 4 coordinates
            plots.plot_pairs(os.path.join(workdir, "pairs.png"), samples, data=test,
                             title=title.format(**results))
    return results, samples


def check_workdir(workdir: str) -> str:
    """Absolute workdir path, created if missing."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    return workdir


def to_numpy(x):
    """Host numpy copy of replicated device arrays (`distributed.to_host`)."""
    return distributed.to_host(x)


# ------------------------------------------------------------------ failed solves

# Above this fraction of failed evaluation points the warning is printed loudly.
FAILED_FRACTION_WARN = 0.01


def finite_nll(log_q) -> tuple:
    """(NLL over the finite points, their stderr, number of failed points).

    log_q (n,) from a solve with on_failure="nan"; NaN/Inf entries are failed solves.
    With no finite point the NLL and stderr are NaN."""
    log_q = np.asarray(log_q, np.float64)
    ok = np.isfinite(log_q)
    n_failed = int(len(log_q) - ok.sum())
    good = log_q[ok]
    nll = float(-np.mean(good)) if len(good) else float("nan")
    se = float(np.std(good, ddof=1) / math.sqrt(len(good))) if len(good) > 1 else float("nan")
    return nll, se, n_failed


def warn_failed(n_failed: int, n_total: int, what: str) -> None:
    """Print a warning naming how many of n_total points' ODE solves failed (loud
    above FAILED_FRACTION_WARN of them); nothing when none failed."""
    if not n_failed:
        return
    frac = n_failed / max(n_total, 1)
    msg = (f"{n_failed} of {n_total} {what} ({100 * frac:.2f}%) failed the ODE solve "
           f"(max_steps reached or non-finite velocity) and are left out")
    if frac > FAILED_FRACTION_WARN:
        bar = "!" * 78
        print(f"{bar}\nWARNING: MORE THAN {100 * FAILED_FRACTION_WARN:g}% FAILED: {msg}; "
              f"the reported numbers are over the remaining points only and may be "
              f"biased.\n{bar}", flush=True)
    else:
        print(f"WARNING: {msg}.", flush=True)


# --------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_open(path: str):
    """Open path for binary writing under a temporary name, renamed to path when the
    block ends without error: a run killed mid-write never leaves a truncated file."""
    tmp = f"{path}.tmp{os.getpid()}"  # per process: in a multi-process run every
    with open(tmp, "wb") as f:         # process writes the same (identical) file
        yield f
    os.replace(tmp, path)


def save_bytes(path: str, data: bytes) -> None:
    """Write data to path atomically (`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def save_json(path: str, obj) -> None:
    """Write obj (arrays converted to lists) as indented JSON, atomically."""
    save_bytes(path, json.dumps(log_lib.to_python(obj), indent=2).encode())
