"""Local Flow Matching on FFJORD's 8 Gaussians (2-D), official 2-D block layout:
9 blocks 3x256, h_n = 0.025 * 1.25^(n-1)."""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "lfm"
    config.data.name = "eight_gaussians"
    config.data.n_train = 20_000
    config.data.n_val = 2_000
    config.model.hidden = (256, 256, 256)
    config.lfm.num_blocks = 9
    config.lfm.step_c = 0.025
    config.lfm.step_rho = 1.25
    config.lfm.steps_per_block = 2_000
    config.lfm.push_ode.rtol = 1e-4
    config.lfm.push_ode.atol = 1e-4
    config.lfm.n_val = 1_000
    config.train.batch_size = 512
    config.train.steps_per_call = 100
    config.train.ema_decay = 0.99
    config.eval.nll_examples = 1_000
    return default.locked(config)
