"""Class-conditional Local Flow Matching on sklearn's 8x8 digits with a tiny U-Net
(slow on a CPU: the U-Net step takes about 1.2 s on 2 cores; meant for a GPU), in the LFM paper's image layout: 3 OU blocks and a free last
block, the linear interpolant. Labels ride along through every block (training
batches and pushes); samples_grid.png has one class per row with every block guided
(eval.guidance_w); trajectory.png follows a few images through the blocks' inverses;
metrics.json has the test bits/dim of the null-class (marginal) model.

    python -m experiments.train --config configs/lfm_digits.py --workdir runs/lfm_digits

Variants (`configs/lfm_digits.py:<variant>`, as configs/fm_digits.py): uncond, and
mnist (GPU; --config.data.path=../shared/data/mnist), cifar10 (GPU; 100,000 steps per
block, torchcfm's CIFAR-10 U-Net for every block).
"""

from configs import default, fm_digits


def get_config(variant: str = ""):
    config = default.get_config()
    config.method = "lfm"
    fm_digits.apply_image_defaults(config, variant)
    c = config.lfm
    c.num_blocks = 4
    c.step_c, c.step_rho = 0.3, 2.0  # OU steps 0.3, 0.6, 1.2, then the free block
    c.free_last_block = True
    c.interpolant = "linear"
    gpu = "mnist" in variant or "cifar10" in variant
    # CIFAR-10: torchcfm's 400,000 FM steps shared out over the 4 blocks
    c.steps_per_block = 100_000 if "cifar10" in variant else 5_000 if gpu else 400
    c.n_val = 1_000 if gpu else 200
    c.chunk_size = 1_000
    c.push_ode.solver, c.push_ode.num_steps = "heun", 10  # fixed steps on a CPU
    if gpu:
        c.divergence = "hutchinson"
        c.push_ode.solver, c.push_ode.num_steps = "tsit5", 0
        c.push_ode.rtol = c.push_ode.atol = 1e-5
    config.eval.ode.num_steps = 0 if gpu else 10
    return default.locked(config)
