"""Defaults of the `flow_map` config section (flow map matching, SPEC 4).

Objective names are those of `lfm_jax.losses` (keys of `lfm_jax.distill.OBJECTIVES`):
lagrangian_distillation, eulerian_distillation, progressive_distillation (need a
teacher velocity: a flow-matching model trained first, or restored from
`teacher_workdir`), flow_map_matching (direct, over the interpolant), and
lagrangian_ / eulerian_ / progressive_self_distillation (no teacher).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.objective = "lagrangian_self_distillation"
    c.interpolant = "linear"  # linear | trig
    # (s, t) sampler: "" = the objective's default (diagonal for self-distillation,
    # uniform square for flow_map_matching, triangle for the teacher objectives);
    # else uniform | triangle | diagonal | annealed (lfm_jax.flow_map).
    c.time_sampler = ""
    c.diagonal_fraction = 0.75  # diagonal sampler only
    c.initial_gap = 0.05  # annealed sampler only
    c.anneal_steps = 0  # annealed sampler only; 0: half of train.steps
    c.learned_weighting = True  # log-variance lv(s, t): exp(-lv) L + lv
    c.num_teacher_steps = 2  # progressive_distillation: teacher jumps per target
    c.teacher_substeps = 4  # RK4 steps per teacher jump (teacher map from a velocity)
    c.intermediate = "uniform"  # progressive_self_distillation: u ~ U[s, t] | midpoint
    c.zero_init_output = False
    # Teacher velocity (teacher objectives): trained here with the fm/model/train
    # settings for teacher_steps unless teacher_workdir holds a saved teacher.
    c.teacher_workdir = ""
    c.teacher_steps = 5_000
    # Evaluation: flow-map steps K (network calls per sample).
    c.sample_steps = (1, 2, 4, 8)
    return c


def sampler_kwargs(fm_config, total_steps: int) -> dict:
    """Keyword options for the (s, t) sampler named in the section."""
    name = fm_config.time_sampler
    if name == "diagonal":
        return {"diagonal_fraction": fm_config.diagonal_fraction}
    if name == "annealed":
        return {"initial_gap": fm_config.initial_gap,
                "anneal_steps": fm_config.anneal_steps or max(total_steps // 2, 1)}
    return {}


def with_variant(config, variant: str):
    """Data variants: "" / "checkerboard" (2-D) or "gmm43" (43-D Gaussian mixture).

    Select with `--config=configs/flow_map_lsd.py:gmm43`, or set the data fields
    (`--config.data.name=gmm --config.data.dim=43`) directly.
    """
    if variant in ("", "checkerboard"):
        config.data.name = "checkerboard"
    elif variant == "gmm43":
        config.data.name = "gmm"
        config.data.dim = 43
        config.data.n_components = 8
        config.model.hidden = (512, 512, 512)
    else:
        raise ValueError(f"unknown flow-map config variant {variant!r}; "
                         "use checkerboard or gmm43")
    return config
