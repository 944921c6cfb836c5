"""A flow map trained directly on images (no teacher): the two-time U-Net
X_{s,t}(x) = x + (t - s) v_{s,t}(x) on sklearn's 8x8 digits (CPU-sized, meant for a
GPU all the same) or MNIST, with a self-distillation objective (default LSD; PSD,
ESD, ...; docs/maths.md section 4). Evaluation: samples_k<K>.npz / .png and the
sampling wall time for K = 1, 2, 4, 8 network calls (`runs.flow_map.evaluate_images`).

    python -m experiments.train --config configs/flow_map_digits.py:psd --workdir W
    python -m experiments.train --config configs/flow_map_digits.py:lsd,mnist \
        --config.data.path=../shared/data/mnist --workdir W
    python -m experiments.train --config configs/flow_map_digits.py:lsd,mnist,cond \
        --config.data.path=../shared/data/mnist \
        --config.eval.classifier_workdir=runs/clf_mnist --workdir W

Argument: comma-separated; an objective name (a key of `lfm_jax.losses.OBJECTIVES`;
default lsd), image variants of configs/fm_digits.py ("mnist") and "cond". The
shared image settings are `fm_digits.apply_image_defaults`. Without "cond" the map is
unconditional (model.num_classes = 0). With "cond" it is class-conditional,
X(s, t, x, y) with 10 classes and the null label 10: labels are dropped to the null
class with probability fm.p_uncond (0.1) in training, and every K is evaluated per
guidance weight w in eval.guidance_ws (here (0, 1, 2, 3)) with the guided map
X_null + w (X_y - X_null) from the same noise and labels (i % 10):
samples_k<K>_w<w>.npz / .png (one row per class) and, with
eval.classifier_workdir, fd_classifier_K<K>_w<w>, accuracy_K<K>_w<w> and best_w_K<K>
(`runs.flow_map.evaluate_guided`).

U-Net time embedding: the flow-map losses differentiate the network in time (jvp), and
the U-Net embeds time_scale * t, so its time derivatives grow with the scale; here
model.unet_time_scale = 1 (the embedding of t itself, as torchcfm's U-Net and the sCM
paper's continuous-time consistency models), not the FM / LFM default 1000.
"""

from configs import default, fm_digits


def get_config(arg: str = "lsd"):
    from lfm_jax import losses

    parts = [p.strip() for p in arg.split(",") if p.strip()]
    objectives = [p for p in parts if p in losses.OBJECTIVES]
    if len(objectives) > 1:
        raise ValueError(f"more than one objective in {arg!r}: {objectives}")
    cond = "cond" in parts
    if cond and "uncond" in parts:
        raise ValueError(f"both cond and uncond in {arg!r}")
    variants = [p for p in parts if p not in losses.OBJECTIVES and p != "cond"]
    config = default.get_config()
    config.method = "flow_map"
    fm_digits.apply_image_defaults(config, ",".join(variants + ([] if cond else ["uncond"])))
    if cond:  # fm_digits' class-conditional defaults: 10 classes, fm.p_uncond = 0.1
        config.eval.guidance_ws = (0.0, 1.0, 2.0, 3.0)
    config.flow_map.objective = objectives[0] if objectives else "lsd"
    config.flow_map.sample_steps = (1, 2, 4, 8)
    config.model.unet_time_scale = 1.0
    mnist = "mnist" in variants or "cifar10" in variants
    config.train.steps = 100_000 if "cifar10" in variants else 20_000 if mnist else 2_000
    config.flow_map.teacher_steps = config.train.steps  # teacher objectives only
    config.eval.n_samples = 5_000 if mnist else 1_000
    config.eval.chunk_size = 1_000
    return default.locked(config)
