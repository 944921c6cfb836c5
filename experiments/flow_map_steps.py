"""Few-step flow maps vs the teacher ODE: quality and wall time at K = 1, 2, 4, 8.

    python -m experiments.flow_map_steps --config configs/flow_map.py:lsd,quick \
        --workdir runs/fmap_steps [--objectives all] [--config.train.steps=...]

(`,quick` selects small CPU settings, a few minutes for all objectives; `,gmm43` the
43-D mixture; both combine, `:lsd,gmm43,quick`.)

1. Train (or load from the workdir) a flow-matching teacher velocity b.
2. For each objective, train a flow map (teacher objectives distil b; direct matching
   and self-distillation learn from the data alone).
3. Sample n points with K flow-map steps (K network calls), with the teacher's adaptive
   ODE solve (tsit5) and with K Euler steps of the teacher (the same K network calls);
   report energy distance, MMD and sliced W2 against held-out data, sampling wall time
   (best of 3, after compilation), the teacher's test NLL, and for every method the
   mean squared distance of its samples to the adaptive teacher's from the same noise
   (how well the teacher's coupling is reproduced).
Writes results.json, table.md, teacher.msgpack ({"params", "ema_params"}; a damaged
one in the workdir is set aside with a warning and retrained), samples_<name>.png.
Every model is used with its EMA weights if config.eval.use_ema, else its raw ones.
"""

import os
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/flow_map.py:lsd", "Base config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/flow_map_steps", "Output directory.")
flags.DEFINE_string("objectives", "all",
                    "Comma-separated keys of lfm_jax.losses.OBJECTIVES, or 'all', or "
                    "'config' (only config.flow_map.objective).")
flags.DEFINE_integer("n_samples", 0, "Samples per method (0: config.eval.n_samples).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax
    import numpy as np

    from lfm_jax import distill, distributed, files, flow_map, flow_matching, interpolants
    from lfm_jax import losses
    from lfm_jax import logging as log_lib
    from lfm_jax import ode, plots, time_sampling, timing, train
    from lfm_jax.runs import common
    from lfm_jax.runs import flow_map as flow_map_run
    from lfm_jax.runs import validation

    config = FLAGS.config
    validation.validate_config(config)
    weights = "ema_params" if config.eval.use_ema else "params"
    fcfg, tcfg, ecfg = config.flow_map, config.train, config.eval
    n_samples = FLAGS.n_samples or ecfg.n_samples
    workdir = common.check_workdir(FLAGS.workdir)
    names = (sorted(losses.OBJECTIVES) if FLAGS.objectives == "all" else
             [fcfg.objective] if FLAGS.objectives == "config" else
             [s.strip() for s in FLAGS.objectives.split(",") if s.strip()])
    for name in names:
        losses.get_objective(name)  # unknown names fail here, before any training

    dataset = common.load_data(config)
    example_shape = dataset.train.shape[1:]
    mesh = common.make_mesh(config)
    interp = interpolants.get(fcfg.interpolant)
    key = jax.random.PRNGKey(config.seed)
    k_teacher, k_maps, k_z, k_metric = jax.random.split(key, 4)
    test = np.asarray(dataset.test)
    print(f"devices: {jax.devices()}  data: {dataset.name} dim={dataset.dim}  "
          f"objectives: {names}")

    # 1. Teacher velocity.
    net = common.velocity_network(config, example_shape)
    teacher_path = os.path.join(fcfg.teacher_workdir or workdir, "teacher.msgpack")
    template = net.init(k_teacher)
    pair = {"params": template, "ema_params": template}
    if fcfg.teacher_workdir and os.path.exists(teacher_path):
        # not ours to rebuild: a damaged file is an error naming it
        saved = files.load_msgpack(teacher_path, pair)
    else:  # derived: a damaged one is set aside with a warning and retrained
        saved = files.load_or_none(files.load_msgpack, teacher_path, pair)
    if saved is not None:
        teacher_params = saved[weights]
        print(f"loaded teacher ({weights}) from {teacher_path}")
        teacher_train_time = None
    else:
        opt = common.optimizer(config, fcfg.teacher_steps)
        loss_fn = flow_matching.make_loss(net.apply, interp, time_sampling.get("uniform"))
        spc = min(tcfg.steps_per_call, fcfg.teacher_steps)
        step_fn = train.make_train_step(
            loss_fn, opt, sample_batch=flow_matching.make_sample_batch(tcfg.batch_size),
            steps_per_call=spc, ema_decay=tcfg.ema_decay, mesh=mesh)
        state = distributed.replicate(train.create_train_state(k_teacher, template, opt),
                                      mesh)
        t0 = time.perf_counter()
        state, _ = train.fit(state, step_fn, distributed.replicate(dataset.train, mesh),
                             fcfg.teacher_steps, steps_per_call=spc)
        teacher_train_time = time.perf_counter() - t0
        saved = jax.device_get({"params": state.params, "ema_params": state.ema_params})
        files.save_msgpack(os.path.join(workdir, "teacher.msgpack"), saved)
        teacher_params = saved[weights]
        print(f"teacher trained in {teacher_train_time:.1f}s")
    teacher_b = distill.velocity_teacher(net, teacher_params)

    z = jax.random.normal(k_z, (n_samples, *example_shape))
    results = {"config": config.to_dict(), "n_samples": n_samples, "rows": [],
               "weights": weights,
               "teacher_train_time_s": teacher_train_time}

    reference = {}

    def record(method, k, samples, seconds, extra=None):
        samples = common.to_numpy(samples)
        reference.setdefault("teacher", samples)  # the first row is the adaptive teacher
        row = {"method": method, "steps": k, "time_s": seconds,
               **common.sample_metrics(k_metric, samples, test),
               "mse_to_teacher": float(np.mean(np.sum(
                   (samples - reference["teacher"]) ** 2, axis=-1))),
               **(extra or {})}
        results["rows"].append(row)
        print(f"{method:>32s} K={str(k):>8s}  ED={row['energy_distance']:.4f}  "
              f"MMD={row['mmd']:.5f}  SW2={row['sliced_w2']:.4f}  "
              f"MSE-teacher={row['mse_to_teacher']:.4f}  {1e3 * seconds:8.2f} ms")
        return row

    # 2. Teacher baselines: adaptive solve, and Euler with the same network calls.
    options = ode.options_from_config(ecfg.ode)
    adaptive = jax.jit(lambda zz: ode.integrate(teacher_b, zz, 0.0, 1.0, options=options))
    samples, seconds = timing.timed(adaptive, z)
    record("teacher_adaptive", "adaptive", samples, seconds)
    plots.plot_samples(os.path.join(workdir, "samples_teacher.png"), common.to_numpy(samples),
                       data=test, title="teacher (adaptive)")
    logp = jax.jit(lambda x: flow_matching.log_prob(net.apply, teacher_params, x, options=options))
    lp = common.to_numpy(logp(test[: ecfg.nll_examples]))
    results["teacher_test_nll"] = float(-lp.mean())
    print(f"teacher test NLL: {results['teacher_test_nll']:.4f} nats")
    for k in fcfg.sample_steps:
        euler = jax.jit(lambda zz, k=k: ode.integrate(teacher_b, zz, 0.0, 1.0,
                                                      options=ode.Options(solver="euler", num_steps=k)))
        samples, seconds = timing.timed(euler, z)
        record("teacher_euler", k, samples, seconds)

    # 3. Flow maps.
    for i, name in enumerate(names):
        fmap, loss_fn = flow_map_run.make_flow_map_and_loss(config, name, example_shape,
                                                            teacher_b)
        t0 = time.perf_counter()
        try:
            state, history = distill.train_flow_map(
                loss_fn, fmap, dataset.train, key=jax.random.fold_in(k_maps, i),
                num_steps=tcfg.steps, batch_size=tcfg.batch_size, lr=tcfg.lr,
                schedule=tcfg.schedule, warmup_steps=tcfg.warmup_steps,
                grad_clip=tcfg.grad_clip, ema_decay=tcfg.ema_decay,
                steps_per_call=tcfg.steps_per_call, mesh=mesh)
        except train.NonFiniteLossError as err:
            print(f"{name}: diverged ({err})")
            results["rows"].append({"method": name, "diverged": str(err)})
            continue
        train_time = time.perf_counter() - t0
        losses_ = np.asarray(history["loss"])
        tail = losses_[-max(len(losses_) // 10, 1):]
        extra = {"train_time_s": train_time, "final_loss": float(tail.mean()),
                 "loss_tail_std": float(tail.std())}
        X = fmap.bind(jax.device_get(getattr(state, weights)))
        for k in fcfg.sample_steps:
            sampler = jax.jit(lambda zz, k=k: flow_map.sample(X, zz, flow_map.uniform_grid(k)))
            samples, seconds = timing.timed(sampler, z)
            record(name, k, samples, seconds, extra)
            plots.plot_samples(os.path.join(workdir, f"samples_{name}_K{k}.png"),
                               common.to_numpy(samples), data=test, title=f"{name}, K={k}")

    # 4. Table: quality relative to the teacher's adaptive solve and speed-up.
    ref = results["rows"][0]
    lines = ["| method | K | energy dist | MMD | sliced W2 | MSE to teacher | time (ms) | "
             "speed-up | SW2 / teacher SW2 |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if "diverged" in row:
            lines.append(f"| {row['method']} | diverged | | | | | | | |")
            continue
        row["speedup_vs_adaptive"] = ref["time_s"] / max(row["time_s"], 1e-12)
        # the energy distance of a good model is ~0 (an unbiased estimate, can be < 0),
        # so quality relative to the teacher is the sliced-W2 ratio
        row["sw2_ratio_vs_adaptive"] = row["sliced_w2"] / max(ref["sliced_w2"], 1e-12)
        lines.append(
            f"| {row['method']} | {row['steps']} | {row['energy_distance']:.4f} | "
            f"{row['mmd']:.5f} | {row['sliced_w2']:.4f} | {row['mse_to_teacher']:.4f} | "
            f"{1e3 * row['time_s']:.2f} | "
            f"{row['speedup_vs_adaptive']:.1f}x | {row['sw2_ratio_vs_adaptive']:.2f} |")
    lines.append(f"\nteacher test NLL: {results['teacher_test_nll']:.4f} nats "
                 f"({dataset.name}, {ecfg.nll_examples} test points)")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    log_lib.write_json(os.path.join(workdir, "results.json"), results)


if __name__ == "__main__":
    app.run(main)
