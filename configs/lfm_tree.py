"""Local Flow Matching on `tree` (the official repository's 2-D picture density,
lfm_jax.data.sample_tree), the official 2-D layout (configs/lfm_official.toy_2d):
8 OU blocks h = 0.025 ... 0.119 (0.025 * 1.25^k) + a free block, 3x256
Softplus(beta=20), batch 10,000, 50,000 iterations per block, lr 2e-4 x0.99 every 1k.

    --config configs/lfm_tree.py          the official layout (a GPU run)
    --config configs/lfm_tree.py:quick    the same layout, tiny: under a minute on a CPU
"""

from configs import lfm_official


def get_config(arg: str = ""):
    return lfm_official.build(lambda: lfm_official.toy_2d("tree"), arg)
