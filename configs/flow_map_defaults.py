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
    # Learned log-variance lv(s, t): exp(-lv) L + lv. Off by default: on the checkerboard
    # (128x3 MLP, 4000 steps) it let LSD's one-step map throw rare far outliers
    # (energy distance 17 vs 0.007 without it); fine at 1500 steps.
    c.learned_weighting = False
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


def _checkerboard(config):
    config.data.name = "checkerboard"


def _gmm43(config):
    config.data.name = "gmm"
    config.data.dim = 43
    config.data.n_components = 8
    config.model.hidden = (512, 512, 512)


def _quick(config):
    """Small CPU settings (a few minutes for all objectives in experiments/flow_map_steps)."""
    config.model.hidden = (128, 128, 128)
    config.train.steps = 1_500
    config.train.steps_per_call = 100
    config.train.warmup_steps = 0
    config.flow_map.teacher_steps = 1_500
    config.eval.n_samples = 2_000
    config.eval.nll_examples = 500


VARIANTS = {"": lambda config: None, "checkerboard": _checkerboard, "gmm43": _gmm43,
            "quick": _quick}


def with_variant(config, variant: str):
    """Apply comma-separated variants: "checkerboard" (2-D, the default), "gmm43" (43-D
    Gaussian mixture), "quick" (small CPU settings), e.g.
    `--config=configs/flow_map_lsd.py:gmm43,quick`. Command-line overrides
    (`--config.train.steps=...`) apply after the variants. The data fields can also be
    set directly (`--config.data.name=gmm --config.data.dim=43`).
    """
    for part in variant.split(","):
        part = part.strip()
        if part not in VARIANTS:
            raise ValueError(f"unknown flow-map config variant {part!r}; known: "
                             f"{sorted(v for v in VARIANTS if v)}")
        VARIANTS[part](config)
    return config
