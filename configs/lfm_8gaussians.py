"""Local Flow Matching on FFJORD's 8 Gaussians (2-D), official 2-D block layout:
9 blocks 3x256, h_n = 0.025 * 1.25^(n-1) (as configs/lfm_checkerboard_official.py)."""

from configs import lfm_checkerboard_official


def get_config():
    config = lfm_checkerboard_official.get_config()  # locked: a misspelt field raises
    config.data.name = "eight_gaussians"
    config.data.n_train = 20_000
    config.lfm.steps_per_block = 2_000
    config.train.checkpoint_every = 1_000
    config.eval.ode.rtol = config.eval.ode.atol = 1e-5
    return config
