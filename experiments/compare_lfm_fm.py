"""LFM vs one global flow-matching model at equal parameters and wall-clock budget.

    python -m experiments.compare_lfm_fm --workdir runs/compare [--budget_s 60]
        [--datasets checkerboard,gmm43] [--quick]

For each data set, LFM (configs/lfm_<name>.py) and plain FM get the same training
wall-clock budget (seconds of training, pushes of the training set included for LFM,
evaluation and compilation excluded) and the same total parameter count (the FM MLP's
width is chosen so that its parameter count matches the sum over LFM's blocks).
Training stops by elapsed time: FM after the first fused call past the budget; LFM
gives each of its N blocks budget/N seconds, its training stopping by time so that
training plus the (estimated) push fit in it. The lr schedules span the steps expected
from the measured speed of one fused call. Test NLL (nats, exact divergence) is
measured over training time: for LFM after every block (the truncated model q_n is a
normalised density), for FM at `--fm_evals` evenly spaced times. Writes compare.json,
compare.md (table), nll_<data>.png (NLL against training time with the entropy floor)
and samples_<data>_<method>.png.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from experiments import timing

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_string("datasets", "checkerboard,gmm43", "Comma-separated: checkerboard, gmm43.")
flags.DEFINE_float("budget_s", 60.0, "Training wall-clock budget per method and data set.")
flags.DEFINE_integer("fm_evals", 6, "Number of NLL evaluations along FM training.")
flags.DEFINE_integer("nll_examples", 1000, "Test points for every NLL evaluation.")
flags.DEFINE_bool("quick", False, "Smaller models and data (a few CPU minutes in all).")
flags.mark_flags_as_required(["workdir"])


def _config(name):
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


def _median_and_runaways(log_q, margin: float = 1e3):
    """Median NLL over the finite points, and how many points exceed it by `margin`.

    A long-trained model can send the backward flows of a few low-density test points
    off to huge |x|, where the Gaussian base term dominates the MEAN NLL while the
    median barely moves; both are reported so that such runaways are visible."""
    import numpy as np

    nll = -np.asarray(log_q, np.float64)
    nll = nll[np.isfinite(nll)]
    if not len(nll):
        return float("nan"), 0
    med = float(np.median(nll))
    return med, int(np.sum(nll > med + margin))


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
    """LFM under a wall-clock budget: budget_s / N per block, covering the block's
    training and the push of the training set through it (the push is part of LFM
    training); each block's training stops by elapsed time (`block_train_budget_s`).
    Test NLL of the truncated model after every block; evaluation time excluded."""
    import jax
    import numpy as np

    from lfm_jax import distributed, train
    from lfm_jax.runs import common, lfm_blocks
    from lfm_jax.runs import lfm as lfm_run

    mesh = common.make_mesh(config)
    example_shape = tuple(dataset.train.shape[1:])
    network, model, opt, step_fn = lfm_blocks.make_trainer(config, example_shape, mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), network.init(jax.random.PRNGKey(0)),
                                     opt, mesh=mesh)
    data = distributed.replicate({"x": np.asarray(dataset.train), "h": np.float32(0.1)}, mesh)
    tps = timing.seconds_per_step(step_fn, state, data, config.train.steps_per_call)
    # Push time of a block, estimated from one call of the (compiled) sharded push; the
    # push is compiled per chunk shape, so this also compiles it outside the budget.
    chunk = np.asarray(dataset.train[: config.lfm.chunk_size * len(jax.devices())])
    p0 = network.init(jax.random.PRNGKey(0))
    model.block_map(p0, chunk, mesh=mesh)
    t0 = time.perf_counter()
    model.block_map(p0, chunk, mesh=mesh)
    push_s = (time.perf_counter() - t0) * len(dataset.train) / len(chunk)
    spc = config.train.steps_per_call
    per_block = budget_s / model.num_blocks
    train_budget = max(per_block - 1.5 * push_s, 0.25 * per_block)
    # The lr schedule spans the steps expected in the budget; training stops by time.
    config.lfm.steps_per_block = max(spc, -(-int(train_budget / tps) // spc) * spc)
    config.train.checkpoint_every = 10**9
    # Compile the step and the validation log-det outside the timed region (as for FM).
    trainer = lfm_blocks.make_trainer(config, example_shape, mesh)
    network, model, opt, step_fn = trainer
    state = train.create_train_state(jax.random.PRNGKey(0), network.init(jax.random.PRNGKey(0)),
                                     opt, mesh=mesh)
    jax.block_until_ready(step_fn(state, data)[1])
    x_val = np.asarray(dataset.val[: config.lfm.n_val])
    model.block_log_det(p0, x_val, method=config.lfm.divergence,
                        key=jax.random.PRNGKey(0), n_probes=config.lfm.n_probes, mesh=mesh)
    _, params_list, reports = lfm_blocks.train_blocks(config, dataset, workdir, mesh=mesh,
                                                      trainer=trainer, verbose=True,
                                                      block_train_budget_s=train_budget)
    emodel = lfm_run.eval_model(config, model)
    test = np.asarray(dataset.test[: config.eval.nll_examples])
    # Failed solves (max_steps, non-finite velocity) come back NaN and are counted.
    per_block_lp = emodel.log_prob(params_list, test, per_block=True, mesh=mesh)
    n_failed = [int(np.sum(~np.isfinite(row))) for row in per_block_lp]
    common.warn_failed(n_failed[-1], len(test), "LFM test points")
    train_s = [r.get("train_time_s", 0.0) for r in reports[1:]]
    push = [r.get("push_time_s", 0.0) for r in reports[1:]]
    times = np.cumsum([0.0] + [t + p for t, p in zip(train_s, push)])
    nll = [common.finite_nll(row)[0] for row in per_block_lp]
    z = jax.random.normal(jax.random.PRNGKey(1), (config.eval.n_samples,) + example_shape)
    samples = emodel.generate(params_list, z, mesh=mesh)
    samples = samples[np.all(np.isfinite(samples.reshape(len(samples), -1)), axis=1)]
    n_params = sum(network.num_params(p) for p in params_list)
    med_run = [_median_and_runaways(row) for row in per_block_lp]
    return {"time_s": times.tolist(), "test_nll": nll, "num_params": int(n_params),
            "test_nll_median": [m for m, _ in med_run],
            "test_n_runaway": [r for _, r in med_run],
            "steps_per_block": [r.get("steps_trained") for r in reports[1:]],
            "block_train_budget_s": train_budget, "push_time_s": push,
            "train_time_s": train_s, "estimated_push_s": push_s,
            "blocks": model.num_blocks, "hidden": list(config.model.hidden),
            "sec_per_step": tps, "test_n_failed": n_failed}, samples


def run_fm(config, dataset, workdir, budget_s, n_params_target):
    """One global FM model (same depth, width matched to LFM's total parameter count)
    trained until `budget_s` seconds of training have elapsed (measured per fused call,
    evaluation excluded); test NLL at `--fm_evals` evenly spaced times."""
    import jax
    import numpy as np

    from lfm_jax import distributed, flow_matching, interpolants, networks, ode, train
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
    loss_fn = flow_matching.make_loss(net.apply, interpolants.get(config.lfm.interpolant),
                                      lambda k, n: jax.random.uniform(k, (n,)))
    sample_batch = flow_matching.make_sample_batch(t.batch_size)
    data = distributed.replicate(np.asarray(dataset.train), mesh)

    def fresh(opt):
        return distributed.replicate(train.create_train_state(
            jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt), mesh)

    # The lr schedule spans the steps expected in the budget (from the measured speed);
    # training itself stops by elapsed time.
    probe_opt = common.optimizer(config, total_steps=10**6)
    probe = train.make_train_step(loss_fn, probe_opt, sample_batch=sample_batch,
                                  steps_per_call=spc, ema_decay=t.ema_decay, mesh=mesh)
    tps = timing.seconds_per_step(probe, fresh(probe_opt), data, spc)
    total = max(spc, -(-int(budget_s / tps) // spc) * spc)
    opt = common.optimizer(config, total_steps=total)
    step_fn = train.make_train_step(loss_fn, opt, sample_batch=sample_batch,
                                    steps_per_call=spc, ema_decay=t.ema_decay, mesh=mesh)
    e = config.eval
    test = np.asarray(dataset.test[: e.nll_examples])
    # A failed solve (a half-trained 43-D field can be stiff) is NaN, counted, and left
    # out, as for LFM; it does not end the comparison.
    options = common.eval_ode_options(config)
    logp = jax.jit(lambda p, x: flow_matching.log_prob(net.apply, p, x, options=options,
                                                        chunk_size=500))

    medians, runaways = [], []

    def test_nll(params):
        lp = np.asarray(logp(params, test))
        nll_, _, n_failed = common.finite_nll(lp)
        common.warn_failed(n_failed, len(lp), "FM test points")
        med, n_runaway = _median_and_runaways(lp)
        if n_runaway:
            print(f"warning: {n_runaway} FM test points with NLL > median + 1e3 (mean "
                  f"{nll_:.4g}, median {med:.4f}): their backward flows escaped", flush=True)
        medians.append(med)
        runaways.append(n_runaway)
        return nll_

    state = fresh(opt)
    times, nll, steps, elapsed = [0.0], [test_nll(state.ema_params)], [0], 0.0
    jax.block_until_ready(step_fn(state, data)[1])  # compile outside the budget (donated)
    state = fresh(opt)
    marks = [budget_s * k / FLAGS.fm_evals for k in range(1, FLAGS.fm_evals + 1)]
    step = 0
    while elapsed < budget_s:
        t0 = time.perf_counter()
        state, m = step_fn(state, data)
        jax.block_until_ready(m)
        elapsed += time.perf_counter() - t0
        step += spc
        if (marks and elapsed >= marks[0]) or elapsed >= budget_s:
            while marks and elapsed >= marks[0]:
                marks.pop(0)
            times.append(elapsed)
            steps.append(step)
            nll.append(test_nll(state.ema_params))
            print(f"fm step {step}: {elapsed:.1f}s test NLL {nll[-1]:.4f}", flush=True)
    z = jax.random.normal(jax.random.PRNGKey(1), (e.n_samples, dim))
    samples = flow_matching.sample(net.apply, state.ema_params, z,
                                   options=ode.options_from_config(e.ode))
    return {"time_s": times, "test_nll": nll, "test_nll_median": medians,
            "test_n_runaway": runaways, "steps_at_eval": steps,
            "num_params": int(n_params), "steps": step, "scheduled_steps": total,
            "hidden": list(hidden), "sec_per_step": tps}, np.asarray(samples)


def _nll_at(res, t):
    """Test NLL of the latest evaluation at or before training time t (None if none)."""
    vals = [v for s, v in zip(res["time_s"], res["test_nll"]) if s <= t * 1.02 + 1e-9]
    return vals[-1] if vals else None


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
        fracs = (0.25, 0.5, 0.75, 1.0)
        for method, r in (("LFM", lfm_res), ("FM", fm_res)):
            at = [_nll_at(r, f * FLAGS.budget_s) for f in fracs]
            cells = " | ".join("-" if v is None else f"{v:.4f}" for v in at)
            rows.append(f"| {name} | {method} | {r['num_params']} | {r['time_s'][-1]:.1f} | "
                        f"{cells} | {r['test_nll'][-1]:.4f} | "
                        f"{r['test_nll_median'][-1]:.4f} ({r['test_n_runaway'][-1]}) | "
                        f"{floor:.4f} |")
            r["test_nll_at_budget_fraction"] = dict(zip(map(str, fracs), at))
        log_lib.write_json(os.path.join(workdir, "compare.json"), results)
    table = "\n".join([f"budget {FLAGS.budget_s:.0f}s of training per method (pushes "
                       f"included for LFM, evaluation excluded); NLL in nats on "
                       f"{FLAGS.nll_examples} test points, latest evaluation at or before "
                       f"each fraction of the budget ('-': none yet)\n",
                       "| data | method | params | train s | NLL@25% | NLL@50% | NLL@75% | "
                       "NLL@100% | final NLL | final median NLL (runaway points) | floor |",
                       "|---|---|---|---|---|---|---|---|---|---|---|"] + rows)
    with open(os.path.join(workdir, "compare.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
