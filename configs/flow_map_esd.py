"""Flow map, objective eulerian_self_distillation, on the 2-D checkerboard.

Variant: `--config=configs/flow_map_esd.py:gmm43` for the 43-D Gaussian mixture.

The ESD gradient enters through the map's average velocity v_{s,t}(I_s), regressed
onto sg[v_{s,t} + R] (R the Eulerian residual; `losses.eulerian_self_distillation`,
stopgrad="average_velocity", the default). The official variant, gradient through
d/ds X_{s,t} (stopgrad="full", `make_self_distill_loss(..., esd_stopgrad="full")`), is
anti-diffusive under training and blew up on this config (H200, 4x256, 10k steps:
sliced W2 79 at K = 1).
"""

from configs import default, flow_map_defaults


def get_config(variant: str = ""):
    config = default.get_config()
    config.method = "flow_map"
    config.flow_map.objective = "eulerian_self_distillation"
    config.model.hidden = (256, 256, 256, 256)
    config.train.steps = 10_000
    flow_map_defaults.with_variant(config, variant)
    return default.locked(config)
