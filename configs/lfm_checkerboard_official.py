"""Local Flow Matching on the 2-D checkerboard with the official LFM 2-D layout:
9 OU blocks of 3x256 MLPs, h_n = 0.025 * 1.25^(n-1) (cumulative OU time ~ 0.83),
no free block. Slower than the README's quick job (configs/lfm_checkerboard.py)."""

from configs import lfm_checkerboard


def get_config():
    config = lfm_checkerboard.get_config()  # locked: a misspelt field raises
    config.data.n_train = 100_000
    config.lfm.num_blocks = 9
    config.lfm.step_c = 0.025
    config.lfm.step_rho = 1.25
    config.lfm.free_last_block = False
    config.lfm.steps_per_block = 10_000
    return config
