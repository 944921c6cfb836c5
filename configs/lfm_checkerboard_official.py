"""Local Flow Matching on the 2-D checkerboard with the official 2-D layout
(configs/lfm_official.toy_2d; the official code has no checkerboard run): 8 OU blocks
h = 0.025 ... 0.119 (0.025 * 1.25^k) + a free block, 3x256 Softplus(beta=20), batch
10,000, 50,000 iterations per block, lr 2e-4 x0.99 every 1k. The README's main job,
configs/lfm_checkerboard.py, is our tuned CPU setting instead.

    --config configs/lfm_checkerboard_official.py          the official layout (a GPU run)
    --config configs/lfm_checkerboard_official.py:quick    the same layout, tiny: under a minute on a CPU
"""

from configs import lfm_official


def get_config(arg: str = ""):
    return lfm_official.build(lambda: lfm_official.toy_2d("checkerboard"), arg)
