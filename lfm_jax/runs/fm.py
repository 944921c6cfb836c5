"""Plain flow matching job: train (resumable), evaluate, write artefacts.

Writes to the workdir: ckpt/ (orbax), metrics.jsonl (training curve),
metrics.json (final metrics), samples.png, loss.png.

Evaluation solves with `on_failure="nan"`: test points (samples) whose ODE solve fails
are left out of the NLL (sample metrics) and counted as `n_failed`
(`n_samples_failed`) in metrics.json, with a printed warning, instead of ending the run.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from lfm_jax import couplings, distributed, flow_matching, interpolants
from lfm_jax import logging as log_lib
from lfm_jax import metrics, ode, plots, train
from lfm_jax.runs import common
from lfm_jax.runs.lfm import finite_nll, warn_failed


def run(config, workdir: str) -> dict:
    """Train (resumably), evaluate and write the artefacts of a plain FM run; returns the final metrics."""
    workdir = common.check_workdir(workdir)
    dataset = common.load_data(config)
    mesh = common.make_mesh(config)
    t_cfg = config.train
    example_shape = dataset.train.shape[1:]
    net = common.velocity_network(config, example_shape)
    opt = common.optimizer(config)
    loss_fn = flow_matching.make_loss(
        net.apply, interpolants.get(config.fm.interpolant),
        common.make_time_sampler(config.fm),
        couplings.get(config.fm.coupling))
    step_fn = train.make_train_step(
        loss_fn, opt, sample_batch=flow_matching.make_sample_batch(t_cfg.batch_size),
        steps_per_call=t_cfg.steps_per_call, ema_decay=t_cfg.ema_decay, mesh=mesh)

    key = jax.random.PRNGKey(config.seed)
    init_key, state_key, eval_key = jax.random.split(key, 3)
    state = train.create_train_state(state_key, net.init(init_key), opt)
    state = distributed.replicate(state, mesh)
    train_data = distributed.replicate(np.asarray(dataset.train), mesh)
    state, train_time, log_path = common.resumable_fit(config, state, step_fn, train_data,
                                                       workdir, "fm")

    results = evaluate(config, net, state, dataset, eval_key, workdir)
    results.update(method="fm", steps=int(state.step), train_time_s=train_time,
                   num_params=net.num_params(state.params))
    curve = log_lib.read_jsonl(log_path)
    plots.plot_loss(os.path.join(workdir, "loss.png"), [r["step"] for r in curve],
                    [r["loss"] for r in curve])
    log_lib.write_json(os.path.join(workdir, "metrics.json"), results)
    return results


def evaluate(config, net, state, dataset, key, workdir) -> dict:
    """Test NLL (nats, exact or Hutchinson divergence), sample quality, samples.png."""
    e = config.eval
    params = state.ema_params if e.use_ema else state.params
    k_sample, k_metric, k_div = jax.random.split(key, 3)
    # on_failure="nan": a failed solve gives NaN for that example only (counted below)
    ode_kw = dict(solver=e.solver, rtol=e.rtol, atol=e.atol, max_steps=e.max_steps,
                  on_failure="nan")
    mesh = common.make_mesh(config)
    noise = jax.random.normal(k_sample, (e.n_samples, *dataset.train.shape[1:]))

    def sample_rows(p, key, z, idx):
        return ode.integrate(lambda t, x: net.apply(p, t, x), z, 0.0, 1.0, **ode_kw)

    def log_prob_rows(p, key, x, idx):
        # Hutchinson: fold in the chunk's first global index, so chunks draw new probes
        div_kw = {"method": e.divergence}
        if e.divergence == "hutchinson":
            div_kw["key"] = jax.random.fold_in(key, idx[0])
        return ode.log_prob(lambda t, y: net.apply(p, t, y), x, ode.standard_normal_log_prob,
                            t_data=1.0, t_base=0.0, **ode_kw, **div_kw)

    samples = distributed.sharded_map(sample_rows, params, noise, mesh=mesh,
                                      chunk_size=e.chunk_size)
    test = np.asarray(dataset.test[: e.nll_examples])
    lp = distributed.sharded_map(log_prob_rows, params, test, mesh=mesh,
                                 chunk_size=e.chunk_size, key=k_div)
    nll, nll_se, n_failed = finite_nll(lp)
    warn_failed(n_failed, len(lp), "test points")
    samples = np.asarray(samples)
    bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    warn_failed(int(bad.sum()), len(samples), "generated samples")
    results = {
        "test_nll": nll,
        "test_nll_stderr": nll_se,
        "n_failed": n_failed,
        "nll_examples": int(len(lp)),
        "n_samples_failed": int(bad.sum()),
        "dim": int(dataset.dim),
    }
    floor = metrics.entropy_floor(dataset)
    if floor is not None:
        results["nll_floor"] = float(floor[0] if isinstance(floor, tuple) else floor)
    if bad.all():  # nothing to measure or plot; the NLL metrics are still written
        return results
    samples = samples[~bad]
    results.update(common.sample_metrics(k_metric, samples, np.asarray(dataset.test)))
    plots.plot_samples(os.path.join(workdir, "samples.png"), samples,
                       data=np.asarray(dataset.test), title=f"{config.method} samples")
    if dataset.dim == 2:
        times = np.linspace(0.0, 1.0, 33)
        paths = jax.jit(lambda p, z: ode.integrate(lambda t, x: net.apply(p, t, x), z, 0.0, 1.0,
                                                   save_times=times, **ode_kw))(params, noise[:200])
        plots.plot_trajectories(os.path.join(workdir, "trajectories.png"), common.to_numpy(paths))
    return results
