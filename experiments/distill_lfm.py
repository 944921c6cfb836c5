"""Distil a trained Local Flow Matching model into few-step flow maps (docs/maths.md sections 3-4).

    python -m experiments.train --config configs/lfm_checkerboard.py --workdir W
    python -m experiments.distill_lfm --config configs/lfm_checkerboard.py --workdir W \
        [--objective lmd] [--steps 1500] [--width 128] [--depth 3]

(pass the same --config and --config.* overrides as for training: the block networks
are rebuilt from them.)

1. Load the LFM's block params from W/blocks/<n>/params.msgpack (no retraining; a
   missing block is a clear error) and its pushed training data.
2. Distil every block's inverse T_n^{-1} into a flow map with
   `distill.distill_lfm_blocks` (pairs: the block's pushed data x_l and its OU partner
   x_r; the teacher is the block velocity v_n, default Lagrangian map distillation).
   Each distilled block is checkpointed in W/distill/<objective>/block_<n>.msgpack;
   rerunning skips finished blocks.
3. Generate from the same noise with N x K flow-map calls (K = --sample_steps), with
   the LFM's adaptive ODE solves (config.eval tolerances, the reference), and with K
   Euler steps of every block's ODE (the same N x K velocity calls). Energy distance,
   MMD and sliced W2 against held-out test data (`runs.common.sample_metrics`), energy
   distance and mean squared distance to the ODE samples from the same noise, and
   sampling wall time (`timing.timed`: best of 3 after a warm-up).
Writes results.json, table.md and samples_*.png to W/distill/<objective>/.
"""

import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/lfm_checkerboard.py",
                                "The LFM config the workdir was trained with.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "LFM workdir (blocks/<n>/ from experiments.train).")
flags.DEFINE_string("objective", "lmd", "A key of lfm_jax.losses.OBJECTIVES.")
flags.DEFINE_integer("steps", 1500, "Distillation steps per block.")
flags.DEFINE_integer("width", 128, "Flow-map MLP width.")
flags.DEFINE_integer("depth", 3, "Flow-map MLP hidden layers.")
flags.DEFINE_integer("batch_size", 256, "Distillation batch size.")
flags.DEFINE_float("lr", 1e-3, "Learning rate (cosine schedule).")
flags.DEFINE_float("ema_decay", 0.995, "EMA of the flow-map params (used for sampling).")
flags.DEFINE_string("sample_steps", "1,2,4", "Comma-separated K (flow-map steps per block).")
flags.DEFINE_integer("n_samples", 2000, "Samples per method.")
flags.DEFINE_string("out", "", "Output directory (default W/distill/<objective>).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import time

    import jax
    import numpy as np

    from lfm_jax import distill, lfm, plots, timing
    from lfm_jax import logging as log_lib
    from lfm_jax.runs import common
    from lfm_jax.runs import lfm as lfm_run, lfm_distill

    config = FLAGS.config
    workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
    out = FLAGS.out or os.path.join(workdir, "distill", FLAGS.objective)
    os.makedirs(out, exist_ok=True)
    dataset = common.load_data(config)
    mesh = common.make_mesh(config)
    example_shape = tuple(dataset.train.shape[1:])
    network, model, params_list = lfm_distill.load_trained_blocks(config, workdir, example_shape)
    N = model.num_blocks
    print(f"devices: {jax.devices()}  data: {config.data.name}  LFM blocks: {N}  "
          f"objective: {FLAGS.objective}")

    t0 = time.perf_counter()
    maps, infos = lfm_distill.distill_blocks(
        config, workdir, network, model, params_list, dataset.train, out_dir=out,
        objective=FLAGS.objective, hidden=(FLAGS.width,) * FLAGS.depth, steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, lr=FLAGS.lr, ema_decay=FLAGS.ema_decay, mesh=mesh)
    distill_time = time.perf_counter() - t0

    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    k_z, k_metric = jax.random.split(key)
    test = np.asarray(dataset.test)
    z = np.asarray(jax.random.normal(k_z, (FLAGS.n_samples,) + example_shape))
    rows, ref = [], {}

    def record(method, k, calls, samples, seconds):
        samples = np.asarray(samples)
        if not np.all(np.isfinite(samples)):
            print(f"{method} K={k}: non-finite samples")
        ref.setdefault("ode", samples)
        row = {"method": method, "K": k, "network_calls": calls, "time_s": seconds,
               **common.sample_metrics(k_metric, samples, test),
               "energy_distance_to_ode": common.sample_metrics(
                   k_metric, samples, ref["ode"])["energy_distance"],
               "mse_to_ode": float(np.mean(np.sum((samples - ref["ode"]) ** 2, axis=-1)))}
        rows.append(row)
        print(f"{method:>14s} K={str(k):>8s} ED={row['energy_distance']:.4f} "
              f"SW2={row['sliced_w2']:.4f} ED-ode={row['energy_distance_to_ode']:.4f} "
              f"MSE-ode={row['mse_to_ode']:.4f} {1e3 * seconds:9.2f} ms", flush=True)
        return samples

    # Reference: the LFM's adaptive ODE generation (config.eval tolerances).
    emodel = lfm_run.eval_model(config, model)
    samples, seconds = timing.timed(lambda zz: emodel.push_backward(params_list, zz,
                                                                     mesh=mesh), z)
    record("lfm_ode", "adaptive", None, samples, seconds)
    plots.plot_samples(os.path.join(out, "samples_lfm_ode.png"), samples, data=test,
                       title=f"LFM adaptive ODE ({N} blocks)")
    record("noise", 0, 0, z, 0.0)

    ks = [int(k) for k in FLAGS.sample_steps.split(",") if k.strip()]
    fmaps = [fmap for fmap, _ in maps]
    params = [p for _, p in maps]
    for k in ks:
        gen = jax.jit(lambda ps, zz, k=k: distill.generate_lfm(list(zip(fmaps, ps)), zz, k))
        samples, seconds = timing.timed(gen, params, z)
        samples = record("distilled", k, N * k, samples, seconds)
        plots.plot_samples(os.path.join(out, f"samples_distilled_K{k}.png"), samples,
                           data=test, title=f"distilled LFM, {N} blocks x K={k}")
        euler = lfm.LocalFlow(model.velocity, model.step_sizes, model.example_shape,
                              solver="euler", num_steps=k, chunk_size=model.chunk_size)
        samples, seconds = timing.timed(
            lambda zz: euler.push_backward(params_list, zz, mesh=mesh), z)
        record("lfm_euler", k, N * k, samples, seconds)

    t_ode = rows[0]["time_s"]
    for r in rows:
        r["speedup_vs_ode"] = t_ode / r["time_s"] if r["time_s"] else None
    lines = ["| method | K per block | network calls | energy dist | MMD | sliced W2 | "
             "ED to ODE samples | MSE to ODE samples | time (ms) | speed-up vs ODE |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = "" if r["speedup_vs_ode"] is None else f"{r['speedup_vs_ode']:.1f}x"
        lines.append(f"| {r['method']} | {r['K']} | {'adaptive' if r['network_calls'] is None else r['network_calls']} | "
                     f"{r['energy_distance']:.4f} | {r['mmd']:.5f} | {r['sliced_w2']:.4f} | "
                     f"{r['energy_distance_to_ode']:.4f} | {r['mse_to_ode']:.4f} | "
                     f"{1e3 * r['time_s']:.2f} | {sp} |")
    lines.append(f"\n{config.data.name}, {N} LFM blocks, objective {FLAGS.objective}, "
                 f"{FLAGS.steps} steps/block, flow map {FLAGS.depth}x{FLAGS.width}, "
                 f"{FLAGS.n_samples} samples vs {len(test)} test points; distillation "
                 f"{distill_time:.1f}s this run ({sum('loaded' in i for i in infos)} blocks "
                 f"loaded from checkpoints). 'noise' is z itself.")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    log_lib.write_json(os.path.join(out, "results.json"), {
        "workdir": workdir, "objective": FLAGS.objective, "num_blocks": N,
        "steps": FLAGS.steps, "hidden": [FLAGS.width] * FLAGS.depth,
        "n_samples": FLAGS.n_samples, "distill_time_s": distill_time, "blocks": infos,
        "rows": rows})


if __name__ == "__main__":
    app.run(main)
