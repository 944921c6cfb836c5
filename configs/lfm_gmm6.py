"""Local Flow Matching on a 6-D Gaussian mixture (exact density: known NLL floor),
the POWER-sized stand-in: 3 OU blocks h = 0.15, 0.225, 0.34 and a free block, 4x256."""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "lfm"
    config.data.name = "gmm"
    config.data.dim = 6
    config.data.n_components = 8
    config.data.n_train = 50_000
    config.model.hidden = (256, 256, 256, 256)
    config.lfm.num_blocks = 4
    config.lfm.step_c = 0.15
    config.lfm.step_rho = 1.5
    config.lfm.free_last_block = True
    config.lfm.steps_per_block = 4_000
    config.train.batch_size = 512
    config.train.steps_per_call = 100
    config.train.ema_decay = 0.995
    return default.locked(config)
