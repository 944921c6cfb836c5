"""Flow map on the 2-D checkerboard (by default), one file for every objective:

    --config configs/flow_map.py:<objective>[,quick|gmm43|checkerboard]

<objective> is a key of `lfm_jax.losses.OBJECTIVES` (lmd, emd, pfmm, fmm, lsd, esd,
esd_meanflow, psd); the variants after it, comma-separated: "checkerboard" (2-D, the
default), "gmm43" (43-D Gaussian mixture), "quick" (small CPU settings, a few minutes
for all objectives in experiments/flow_map_steps). Command-line overrides
(`--config.train.steps=...`) apply after the variants; the data fields can also be set
directly (`--config.data.name=gmm --config.data.dim=43`).
"""

from configs import default


def _checkerboard(config):
    config.data.name = "checkerboard"


def _gmm43(config):
    config.data.name = "gmm"
    config.data.dim = 43
    config.data.n_components = 8
    config.model.hidden = (512, 512, 512)


def _quick(config):
    config.model.hidden = (128, 128, 128)
    config.train.steps = 1_500
    config.train.steps_per_call = 100
    config.train.warmup_steps = 0
    config.flow_map.teacher_steps = 1_500
    config.eval.n_samples = 2_000
    config.eval.nll_examples = 500


VARIANTS = {"checkerboard": _checkerboard, "gmm43": _gmm43, "quick": _quick}


def get_config(arg: str = "lsd"):
    from lfm_jax import losses

    objective, *variants = [part.strip() for part in arg.split(",")]
    losses.get_objective(objective)  # an unknown objective is an error here
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown flow-map config variant(s) {unknown} in {arg!r}; "
                         f"known: {sorted(VARIANTS)}")
    config = default.get_config()
    config.method = "flow_map"
    config.flow_map.objective = objective
    config.model.hidden = (256, 256, 256, 256)
    config.train.steps = 10_000
    for v in variants:
        VARIANTS[v](config)
    return default.locked(config)
