"""Pieces shared by the jobs in `lfm_jax.runs`: data, model, optimiser, evaluation."""

from __future__ import annotations

import os
import time

import jax.numpy as jnp
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import checkpoint, distributed, metrics, networks, time_sampling, train
from lfm_jax import logging as log_lib


def load_data(config):
    """The dataset named by config.data (validated)."""
    d = config.data
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
    """The config.model MLP as a velocity `Network` for examples of example_shape."""
    m = config.model
    return networks.velocity_mlp(example_shape, hidden=tuple(m.hidden), activation=m.activation,
                                 num_frequencies=m.num_frequencies,
                                 max_frequency=m.max_frequency)


def optimizer(config, total_steps=None):
    """The config.train optimiser; its schedule spans total_steps (default train.steps)."""
    t = config.train
    return train.make_optimizer(lr=t.lr, schedule=t.schedule, warmup_steps=t.warmup_steps,
                                total_steps=total_steps or t.steps, grad_clip=t.grad_clip,
                                weight_decay=t.weight_decay)


def resumable_fit(config, state, step_fn, train_data, workdir: str, desc: str):
    """Train to config.train.steps, resuming from `<workdir>/ckpt` if it holds a
    checkpoint; log mean loss and grad norm per call to `<workdir>/metrics.jsonl`
    (records past the restored step are dropped first, so each step is logged once).

    Returns (state, training wall-clock seconds, metrics.jsonl path)."""
    t_cfg = config.train
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "ckpt"),
                                   save_every=t_cfg.checkpoint_every,
                                   keep=t_cfg.keep_checkpoints)
    state = ckpt.restore(state)
    start = int(state.step)
    writer = log_lib.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))
    log_lib.truncate_jsonl(writer.path, start)
    if start:
        print(f"resuming from step {start} in {ckpt.directory}")

    def callback(step, m):
        writer.write(step, loss=float(np.mean(m["loss"])),
                     grad_norm=float(np.mean(m["grad_norm"])))

    progress = log_lib.Progress(t_cfg.steps, initial=start, desc=desc)
    t0 = time.perf_counter()
    state, _ = train.fit(state, step_fn, train_data, t_cfg.steps,
                         steps_per_call=t_cfg.steps_per_call, callback=callback,
                         checkpointer=ckpt, progress=progress)
    progress.close()
    train_time = time.perf_counter() - t0
    ckpt.close()
    return state, train_time, writer.path


def sample_metrics(key, samples, reference, max_points: int = 2000) -> dict:
    """Energy distance, MMD and sliced W2 between samples and held-out data."""
    n = min(len(samples), len(reference), max_points)
    x = jnp.asarray(samples[:n], jnp.float32)
    y = jnp.asarray(reference[:n], jnp.float32)
    return {
        "energy_distance": float(metrics.energy_distance(x, y)),
        "mmd": float(metrics.mmd(x, y)),
        "sliced_w2": float(metrics.sliced_wasserstein(key, x, y)),
    }


def check_workdir(workdir: str) -> str:
    """Absolute workdir path, created if missing."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    return workdir


def to_numpy(x):
    """Host numpy copy of replicated device arrays (`distributed.to_host`)."""
    return distributed.to_host(x)
