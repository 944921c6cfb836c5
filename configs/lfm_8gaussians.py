"""Local Flow Matching on FFJORD's 8 Gaussians (2-D) with the official 2-D layout
(configs/lfm_official.toy_2d; the official code has no 8-Gaussians run): 8 OU blocks
h = 0.025 ... 0.119 (0.025 * 1.25^k) + a free block, 3x256 Softplus(beta=20), batch
10,000, 50,000 iterations per block, lr 2e-4 x0.99 every 1k.

    --config configs/lfm_8gaussians.py          the official layout (a GPU run)
    --config configs/lfm_8gaussians.py:quick    the same layout, tiny: under a minute on a CPU
"""

from configs import lfm_official


def get_config(arg: str = ""):
    return lfm_official.build(lambda: lfm_official.toy_2d("eight_gaussians"), arg)
