"""Plain (global) flow matching on the 2-D checkerboard."""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "fm"
    config.data.name = "checkerboard"
    config.model.hidden = (256, 256, 256, 256)
    config.train.steps = 3_000
    return default.locked(config)
