"""Flow map, objective progressive_distillation, on the 2-D checkerboard.

Variant: `--config=configs/flow_map_pfmm.py:gmm43` for the 43-D Gaussian mixture.
"""

from configs import default, flow_map_defaults


def get_config(variant: str = ""):
    config = default.get_config()
    config.method = "flow_map"
    config.flow_map.objective = "progressive_distillation"
    config.model.hidden = (256, 256, 256, 256)
    config.train.steps = 10_000
    flow_map_defaults.with_variant(config, variant)
    return default.locked(config)
