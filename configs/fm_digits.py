"""Class-conditional flow matching on sklearn's 8x8 digits with a tiny U-Net (CPU,
measured about 1.2 s a step on a 2-core CPU, so 1,500 steps take about 30 minutes;
meant for a GPU): labels dropped with probability 0.1 for classifier-free guidance,
samples_grid.png one class per row (guidance weight eval.guidance_w), test bits/dim.

    python -m experiments.train --config configs/fm_digits.py --workdir runs/fm_digits

Variants (`configs/fm_digits.py:<variant>`):
  uncond  the unconditional model (model.num_classes = 0);
  mnist   MNIST 28x28 with the "mnist" U-Net preset, for a GPU: pass the folder of
          the IDX files, e.g. --config.data.path=../shared/data/mnist (that folder
          holds only the 10,000-image t10k split: data.source_split = "test",
          split here into train / 1,000 val / 1,000 test).
  cifar10 CIFAR-10 32x32x3 with the "cifar10" U-Net preset (torchcfm's CIFAR-10 U-Net,
          35.7 M parameters) and torchcfm's training settings (batch 128, lr 2e-4
          after 5,000 warm-up steps, gradient clip 1, EMA 0.9999, random flips,
          400,000 steps); --config.data.path = the folder of the python batches
          (data_batch_1..5: 50,000 images split into train / 1,000 val / 5,000 test).
"""

from configs import default


VARIANTS = ("uncond", "mnist", "cifar10")


def apply_image_defaults(config, variant: str = ""):
    """The shared image settings of the digits / MNIST configs (FM and LFM); variant:
    comma-separated names from VARIANTS."""
    unknown = [v for v in variant.split(",") if v and v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown image config variant(s) {unknown}; known: {VARIANTS}")
    config.data.name = "digits"
    config.data.n_val, config.data.n_test = 200, 200
    config.model.kind = "unet"
    config.model.unet_preset = "digits8"
    config.model.num_classes = 10
    config.fm.p_uncond = 0.1
    config.train.batch_size = 128
    config.train.steps_per_call = 50
    config.train.lr = 2e-3
    config.train.warmup_steps = 50
    config.train.ema_decay = 0.99
    config.train.checkpoint_every = 500
    config.eval.nll_examples = 200
    config.eval.n_samples = 100
    config.eval.chunk_size = 200
    config.eval.grid_per_class = 10
    config.eval.guidance_w = 1.0
    # fixed-step solves keep the CPU evaluation to seconds; adaptive on a GPU
    config.eval.ode.solver, config.eval.ode.num_steps = "heun", 20
    if "uncond" in variant:
        config.model.num_classes = 0
    if "cifar10" in variant:
        config.data.name = "cifar10"
        config.data.source_split = "train"
        config.data.n_val, config.data.n_test = 1_000, 5_000
        config.data.random_flip = True
        config.model.unet_preset = "cifar10"
        t = config.train
        t.batch_size, t.lr, t.warmup_steps, t.grad_clip = 128, 2e-4, 5_000, 1.0
        t.ema_decay, t.checkpoint_every = 0.9999, 5_000
        config.eval.nll_examples = 1_000
        config.eval.divergence = "hutchinson"
        config.eval.ode.solver, config.eval.ode.num_steps = "tsit5", 0
        config.eval.ode.rtol = config.eval.ode.atol = 1e-5
    if "mnist" in variant:
        config.data.name = "mnist"
        config.data.source_split = "test"
        config.data.n_val, config.data.n_test = 1_000, 1_000
        config.model.unet_preset = "mnist"
        config.train.batch_size = 128
        config.train.lr = 5e-4
        config.train.ema_decay = 0.9999
        config.train.checkpoint_every = 2_000
        config.eval.nll_examples = 1_000
        config.eval.divergence = "hutchinson"
        config.eval.ode.solver, config.eval.ode.num_steps = "tsit5", 0
        config.eval.ode.rtol = config.eval.ode.atol = 1e-5
    return config


def get_config(variant: str = ""):
    config = default.get_config()
    config.method = "fm"
    apply_image_defaults(config, variant)
    config.train.steps = (400_000 if "cifar10" in variant
                          else 20_000 if "mnist" in variant else 1_500)
    return default.locked(config)
