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
compared through its null-class (unguided) field (`lfm_distill.student_flow_map`),
unless --guidance_w=w: then every block's teacher is its guided field
v(t, x, null) + w (v(t, x, y) - v(t, x, null)) with each training pair's label, the
students are class-conditional (same family, the LFM's num_classes), and the
comparison gives sample i the label i % num_classes for every method (the LFM's
guided ODE generation at w, its guided Euler steps, the distilled maps given the
labels), scored with the classifier's accuracy against the labels too
(`lfm_distill.distill_blocks`, `distill_eval.compare`); output in
W/distill/<objective>_w<w>. --guidance_w on an unconditional LFM is an error before
any work. --init_from_teacher starts every U-Net student from its block's params (the
blocks' U-Net with a second time input whose weights start at zero, the time
embedding turned round for the reversed field: an untrained student generates
exactly what K Euler steps per block generate, `lfm_distill.teacher_init`) instead
of a random init; it needs the blocks' width and time scale (leave --unet_channels /
--unet_time_scale at 0).

    python -m experiments.distill_lfm --config configs/lfm_digits.py:mnist \
        --config.data.path=../shared/data/mnist \
        --config.eval.classifier_workdir=runs/clf_mnist --workdir W --guidance_w 1

With --config.eval.classifier_workdir (if the config has that key) the samples are
scored by that classifier; with --config.eval.inception_weights=<local
pt_inception-2015-12-05-6726825d.pth> also by standard FID (pytorch-fid). Both are
checked before any distillation (`validation.validate_config`).
"""

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
flags.DEFINE_integer("warmup_steps", 0, "Linear lr warm-up steps before the cosine decay.")
flags.DEFINE_float("ema_decay", 0.995, "EMA of the flow-map params (used for sampling).")
flags.DEFINE_string("sample_steps", "1,2,4", "Comma-separated K (flow-map steps per block).")
flags.DEFINE_integer("n_samples", 2000, "Samples per method.")
flags.DEFINE_string("out", "", "Output directory (default W/distill/<objective>, or "
                    "W/distill/<objective>_w<w> with --guidance_w).")
flags.DEFINE_float("guidance_w", None, "Guided distillation of a class-conditional LFM: "
                   "every block's teacher is its classifier-free guided field at this "
                   "weight and the students are class-conditional flow maps (unset: the "
                   "null-class field, unconditional students).")
flags.DEFINE_bool("init_from_teacher", False, "U-Net students of the blocks' width "
                  "and time scale: start every student as one Euler step of its block's "
                  "(reversed) velocity, its params made from the block's, instead of a "
                  "random init.")
flags.DEFINE_bool("learned_weighting", False, "Students with a learned loss weighting "
                  "lv(s, t) (loss exp(-lv) L + lv), so that short and long jumps count "
                  "alike.")
flags.DEFINE_float("diagonal_fraction", 0.0, "Fraction of every batch with its time pair on "
                   "the diagonal s = t (there the objective matches the student's velocity "
                   "to the teacher's, keeping short jumps accurate).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from lfm_jax.runs import lfm_distill

    lfm_distill.run(
        FLAGS.config, FLAGS.workdir, objective=FLAGS.objective, steps=FLAGS.steps,
        hidden=(FLAGS.width,) * FLAGS.depth, unet_channels=FLAGS.unet_channels,
        unet_time_scale=FLAGS.unet_time_scale, batch_size=FLAGS.batch_size, lr=FLAGS.lr,
        ema_decay=FLAGS.ema_decay,
        sample_steps=[int(k) for k in FLAGS.sample_steps.split(",") if k.strip()],
        n_samples=FLAGS.n_samples, out_dir=FLAGS.out, guidance_w=FLAGS.guidance_w,
        init_from_teacher=FLAGS.init_from_teacher,
        learned_weighting=FLAGS.learned_weighting, warmup_steps=FLAGS.warmup_steps,
        diagonal_fraction=FLAGS.diagonal_fraction)


if __name__ == "__main__":
    app.run(main)
