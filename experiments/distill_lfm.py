"""Distil a trained Local Flow Matching model into few-step flow maps (docs/maths.md sections 3-4).

    python -m experiments.train --config configs/lfm_checkerboard.py --workdir W
    python -m experiments.distill_lfm --config configs/lfm_checkerboard.py --workdir W \
        [--objective lmd] [--steps 1500] [--width 128] [--depth 3]

(pass the same --config and --config.* overrides as for training: the block networks
are rebuilt from them.)

1. Load the LFM's block params from W/blocks/<n>/artefacts (`runs.block_store`; no
   retraining; a missing block is a clear error) and its pushed training data.
2. Distil every block's inverse T_n^{-1} into a flow map with
   `distill.distill_lfm_blocks` (pairs: the block's pushed data x_l and its OU partner
   x_r; the teacher is the block velocity v_n, default Lagrangian map distillation).
   Each distilled block is checkpointed in W/distill/<objective>/block_<n>.msgpack;
   rerunning skips finished blocks.
3. Generate from the same noise with N x K flow-map calls (K = --sample_steps), with
   the LFM's adaptive ODE solves (config.eval tolerances, the reference), and with K
   Euler steps of every block's ODE (the same N x K velocity calls)
   (`runs.distill_eval`): sampling wall time (`timing.timed`: best of 3 after a
   warm-up) and mean squared distance to the ODE samples from the same noise; vector
   data adds energy distance, MMD and sliced W2 against held-out test data and the
   energy distance to the ODE samples.
Writes results.json, table.md and samples_*.png to W/distill/<objective>/ (images:
also samples_<method>[_k<K>].npz, uint8).

Images (an LFM trained with configs/lfm_digits.py[:mnist]): the students are
unconditional two-time U-Nets of the blocks' preset (--unet_channels to change the
width; --width / --depth are for MLPs); a class-conditional LFM is distilled and
compared through its null-class (unguided) field (`lfm_distill.student_flow_map`).
With --config.eval.classifier_workdir (if the config has that key) the samples are
scored by that classifier; with --config.eval.inception_weights=<local
pt_inception-2015-12-05-6726825d.pth> also by standard FID (pytorch-fid). Both are
checked before any distillation (`validation.validate_config`).
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
flags.DEFINE_integer("unet_channels", 0, "U-Net students (model.kind unet): base width "
                     "(0: the LFM blocks' preset width).")
flags.DEFINE_float("unet_time_scale", 0.0, "U-Net students: scale of the time "
                   "embedding (0: the LFM's model.unet_time_scale; the flow-map losses "
                   "differentiate in time, and a small scale, e.g. 1, keeps that tame).")
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

    from lfm_jax import logging as log_lib
    from lfm_jax.runs import common, distill_eval, lfm_distill, validation

    config = FLAGS.config
    validation.validate_config(config)
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
        batch_size=FLAGS.batch_size, lr=FLAGS.lr, ema_decay=FLAGS.ema_decay,
        unet_channels=FLAGS.unet_channels, unet_time_scale=FLAGS.unet_time_scale,
        mesh=mesh)
    distill_time = time.perf_counter() - t0

    ks = [int(k) for k in FLAGS.sample_steps.split(",") if k.strip()]
    rows = distill_eval.compare(config, model, params_list, maps, dataset, out,
                                sample_steps=ks, n_samples=FLAGS.n_samples, mesh=mesh)
    unet = config.model.get("kind", "mlp") == "unet"
    student = (lfm_distill.student_description(config, FLAGS.unet_channels,
                                                   FLAGS.unet_time_scale) if unet
               else {"kind": "mlp", "hidden": [FLAGS.width] * FLAGS.depth})
    table = distill_eval.table(rows) + (
        f"\n\n{config.data.name}, {N} LFM blocks, objective {FLAGS.objective}, "
        f"{FLAGS.steps} steps/block, student {student}, {FLAGS.n_samples} samples from "
        f"the same noise per method ({len(dataset.test)} test points); distillation "
        f"{distill_time:.1f}s this run ({sum('loaded' in i for i in infos)} blocks "
        f"loaded from checkpoints).")
    print(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    log_lib.write_json(os.path.join(out, "results.json"), {
        "workdir": workdir, "objective": FLAGS.objective, "num_blocks": N,
        "steps": FLAGS.steps, "student": student, "n_samples": FLAGS.n_samples,
        "distill_time_s": distill_time, "blocks": infos, "rows": rows})


if __name__ == "__main__":
    app.run(main)
