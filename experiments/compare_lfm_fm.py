"""LFM vs one global flow-matching model at equal parameters and wall-clock budget.

    python -m experiments.compare_lfm_fm --workdir runs/compare [--budget_s 60]
        [--datasets checkerboard,gmm43] [--quick]

For each data set, LFM (configs/lfm_<name>.py) and plain FM get the same training
wall-clock budget (seconds of training, pushes included for LFM, evaluation
excluded) and the same total parameter count (the FM MLP's width is chosen so that
its parameter count matches the sum over LFM's blocks). Steps are set from the
measured time of one fused call of each train step. Test NLL (nats, exact
divergence) is measured over training time: for LFM after every block (the
truncated model q_n is a normalised density), for FM at `--fm_evals` evenly spaced
points. Writes compare.json, compare.md (table), nll_<data>.png (NLL against
training time with the entropy floor) and samples_<data>_<method>.png.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_string("datasets", "checkerboard,gmm43", "Comma-separated: checkerboard, gmm43.")
flags.DEFINE_float("budget_s", 60.0, "Training wall-clock budget per method and data set.")
flags.DEFINE_integer("fm_evals", 6, "Number of NLL evaluations along FM training.")
flags.DEFINE_integer("nll_examples", 1000, "Test points for every NLL evaluation.")
flags.DEFINE_bool("quick", False, "Smaller models and data (a few CPU minutes in all).")
flags.mark_flags_as_required(["workdir"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from configs import lfm_checkerboard, lfm_gmm43

    config = {"checkerboard": lfm_checkerboard, "gmm43": lfm_gmm43}[name].get_config()
    config.unlock()
    if FLAGS.quick:
        config.data.n_train = min(config.data.n_train, 20_000)
        if name == "gmm43":
            config.model.hidden = (128, 128, 128)
    config.eval.nll_examples = FLAGS.nll_examples
    config.eval.n_samples = 2_000
    return config


def _time_per_step(step_fn, state, data, steps_per_call):
    import jax

    state, m = step_fn(state, data)  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    state, m = step_fn(state, data)
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / steps_per_call


def _fm_width(config, n_params_target, dim):
    """Width w of an FM MLP with LFM's depth whose parameter count is closest to the
    target."""
    from lfm_jax import networks

    depth = len(config.model.hidden)

    def count(w):
        net = networks.velocity_mlp((dim,), hidden=(w,) * depth,
                                    num_frequencies=config.model.num_frequencies)
        import jax

        shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0))
        return networks.count_params(shapes)

    lo, hi = 8, 8192
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= n_params_target else (lo, mid)
    w = min((lo, hi), key=lambda v: abs(count(v) - n_params_target))
    return w, count(w)


def run_lfm(config, dataset, workdir, budget_s):
    import jax
    import numpy as np

    from lfm_jax import lfm, train
    from lfm_jax.runs import common
    from lfm_jax.runs import lfm as lfm_run

    mesh = common.make_mesh(config)
    example_shape = tuple(dataset.train.shape[1:])
    network, model, opt, step_fn = lfm_run._components(config, example_shape, mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), network.init(jax.random.PRNGKey(0)),
                                     opt)
    data = {"x": np.asarray(dataset.train), "h": np.float32(0.1)}
    tps = _time_per_step(step_fn, state, data, config.train.steps_per_call)
    # Budget = blocks x (steps x sec/step + push time); the push time of a block is
    # estimated from one timed chunk (after compiling it).
    chunk = np.asarray(dataset.train[: config.lfm.chunk_size])
    p0 = network.init(jax.random.PRNGKey(0))
    model.block_map(p0, chunk, mesh=mesh)
    t0 = time.perf_counter()
    model.block_map(p0, chunk, mesh=mesh)
    push_s = (time.perf_counter() - t0) * len(dataset.train) / len(chunk)
    spc = config.train.steps_per_call
    per_block = max(budget_s / model.num_blocks - 1.2 * push_s, 0.25 * budget_s / model.num_blocks)
    steps = int(per_block / tps) // spc * spc
    config.lfm.steps_per_block = max(spc, steps)
    config.train.checkpoint_every = 10**9
    # Compile the step and the ODE solves outside the timed region (as for FM).
    network, model, opt, step_fn = lfm_run._components(config, example_shape, mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), network.init(jax.random.PRNGKey(0)),
                                     opt)
    jax.block_until_ready(step_fn(state, data)[1])
    params = network.init(jax.random.PRNGKey(0))
    x_val = np.asarray(dataset.val[: config.lfm.n_val])
    model.block_map(params, np.asarray(dataset.train[: config.lfm.chunk_size]), mesh=mesh)
    model.block_log_det(params, x_val, method=config.lfm.divergence,
                        key=jax.random.PRNGKey(0), n_probes=config.lfm.n_probes, mesh=mesh)
    _, params_list, reports = lfm_run.train_blocks(config, dataset, workdir, mesh=mesh,
                                                   verbose=True)
    emodel = lfm_run.eval_model(config, model)
    test = np.asarray(dataset.test[: config.eval.nll_examples])
    per_block = emodel.log_prob(params_list, test, per_block=True, mesh=mesh)
    times = np.cumsum([0.0] + [r.get("train_time_s", 0.0) + r.get("push_time_s", 0.0)
                               for r in reports[1:]])
    nll = [float(-np.mean(row)) for row in per_block]
    samples = emodel.generate(params_list, jax.random.PRNGKey(1), config.eval.n_samples,
                              mesh=mesh)
    n_params = sum(network.num_params(p) for p in params_list)
    return {"time_s": times.tolist(), "test_nll": nll, "num_params": int(n_params),
            "steps_per_block": config.lfm.steps_per_block, "blocks": model.num_blocks,
            "hidden": list(config.model.hidden), "sec_per_step": tps}, samples


def run_fm(config, dataset, workdir, budget_s, n_params_target):
    import jax
    import numpy as np

    from lfm_jax import distributed, flow_matching, interpolants, networks, train
    from lfm_jax.runs import common

    mesh = common.make_mesh(config)
    dim = dataset.dim
    width, n_params = _fm_width(config, n_params_target, dim)
    hidden = (width,) * len(config.model.hidden)
    net = networks.velocity_mlp((dim,), hidden=hidden, activation=config.model.activation,
                                num_frequencies=config.model.num_frequencies,
                                max_frequency=config.model.max_frequency)
    t = config.train
    spc = t.steps_per_call
    loss_fn = flow_matching.make_loss(net.apply, interpolants.get("linear"),
                                      lambda k, n: jax.random.uniform(k, (n,)))
    # Steps from the measured speed; the lr schedule spans all of them.
    probe_opt = common.optimizer(config, total_steps=10**6)
    probe = train.make_train_step(loss_fn, probe_opt,
                                  sample_batch=flow_matching.make_sample_batch(t.batch_size),
                                  steps_per_call=spc, ema_decay=t.ema_decay, mesh=mesh)
    data = distributed.replicate(np.asarray(dataset.train), mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)),
                                     probe_opt)
    tps = _time_per_step(probe, distributed.replicate(state, mesh), data, spc)
    state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)),
                                     probe_opt)
    tps = max(tps, _time_per_step(probe, distributed.replicate(state, mesh), data, spc))
    total = max(spc, int(budget_s / tps) // spc * spc)
    opt = common.optimizer(config, total_steps=total)
    step_fn = train.make_train_step(loss_fn, opt,
                                    sample_batch=flow_matching.make_sample_batch(t.batch_size),
                                    steps_per_call=spc, ema_decay=t.ema_decay, mesh=mesh)
    state = distributed.replicate(
        train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt),
        mesh)
    e = config.eval
    test = np.asarray(dataset.test[: e.nll_examples])
    logp = jax.jit(lambda p, x: flow_matching.log_prob(net.apply, p, x, solver=e.solver,
                                                        rtol=e.rtol, atol=e.atol))

    def test_nll(params):
        return float(-np.mean(np.concatenate([np.asarray(logp(params, test[i:i + 500]))
                                              for i in range(0, len(test), 500)])))

    marks = sorted({max(spc, int(total * k / FLAGS.fm_evals) // spc * spc)
                    for k in range(1, FLAGS.fm_evals + 1)})
    times, nll, elapsed = [0.0], [test_nll(state.ema_params)], 0.0
    step_fn(state, data)  # compile outside the timed region (the state is donated)
    state = distributed.replicate(
        train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt),
        mesh)
    for mark in marks:
        t0 = time.perf_counter()
        state, _ = train.fit(state, step_fn, data, mark, steps_per_call=spc)
        jax.block_until_ready(state.params)
        elapsed += time.perf_counter() - t0
        times.append(elapsed)
        nll.append(test_nll(state.ema_params))
        print(f"fm step {mark}: {elapsed:.1f}s test NLL {nll[-1]:.4f}", flush=True)
    samples = flow_matching.sample(net.apply, state.ema_params, jax.random.PRNGKey(1),
                                   e.n_samples, (dim,), solver=e.solver, rtol=e.rtol,
                                   atol=e.atol)
    return {"time_s": times, "test_nll": nll, "num_params": int(n_params), "steps": total,
            "hidden": list(hidden), "sec_per_step": tps}, np.asarray(samples)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import numpy as np

    from lfm_jax import logging as log_lib
    from lfm_jax import metrics, plots
    from lfm_jax.runs import common

    workdir = common.check_workdir(FLAGS.workdir)
    results, rows = {}, []
    for name in FLAGS.datasets.split(","):
        config = _config(name)
        dataset = common.load_data(config)
        floor = metrics.entropy_floor(dataset)
        lfm_res, lfm_samples = run_lfm(config, dataset, os.path.join(workdir, f"lfm_{name}"),
                                       FLAGS.budget_s)
        fm_res, fm_samples = run_fm(config, dataset, workdir, FLAGS.budget_s,
                                    lfm_res["num_params"])
        results[name] = {"nll_floor": floor, "lfm": lfm_res, "fm": fm_res}
        curves = {"LFM (after each block)": (lfm_res["time_s"], lfm_res["test_nll"]),
                  "FM": (fm_res["time_s"], fm_res["test_nll"])}
        plots.plot_curves(os.path.join(workdir, f"nll_{name}.png"), curves,
                          xlabel="training wall-clock (s)", ylabel="test NLL (nats)",
                          hline=floor, hline_label="entropy (floor)",
                          title=f"{name}: LFM vs FM, equal params and budget")
        for method, s in (("lfm", lfm_samples), ("fm", fm_samples)):
            plots.plot_samples(os.path.join(workdir, f"samples_{name}_{method}.png"), s,
                               data=np.asarray(dataset.test), title=f"{name} {method}")
        for method, r in (("LFM", lfm_res), ("FM", fm_res)):
            rows.append(f"| {name} | {method} | {r['num_params']} | {r['time_s'][-1]:.1f} | "
                        f"{r['test_nll'][-1]:.4f} | {floor:.4f} |")
        log_lib.write_json(os.path.join(workdir, "compare.json"), results)
    table = "\n".join(["| data | method | params | train s | test NLL | floor |",
                       "|---|---|---|---|---|---|"] + rows)
    with open(os.path.join(workdir, "compare.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
