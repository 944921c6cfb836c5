"""Defaults of the `flow_map` config section (flow maps, docs/maths.md section 4).

The objective is a key of `lfm_jax.losses.OBJECTIVES`: lmd, emd, pfmm (Lagrangian,
Eulerian, progressive distillation; they need a teacher velocity, a flow-matching model
trained first or restored from `teacher_workdir`), fmm (direct flow map matching over
the interpolant), lsd, esd, esd_meanflow, psd (self-distillation, no teacher; esd is the
official Eulerian variant, esd_meanflow the MeanFlow-style one). Experiment configs:
`configs/flow_map.py:<objective>[,quick|gmm43]`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.objective = "lsd"
    c.interpolant = "linear"  # linear | trig
    # (s, t) sampler: "" = the objective's default (diagonal for self-distillation,
    # uniform square for fmm, triangle for the teacher objectives);
    # else uniform | triangle | diagonal | annealed (lfm_jax.flow_map).
    c.time_sampler = ""
    c.diagonal_fraction = 0.75  # diagonal sampler (set or the objective's default)
    c.initial_gap = 0.05  # annealed sampler only
    c.anneal_steps = 0  # annealed sampler only; 0: half of train.steps
    # Learned log-variance lv(s, t): exp(-lv) L + lv (off by default; BENCHMARKS.md).
    c.learned_weighting = False
    c.num_teacher_steps = 2  # pfmm: teacher jumps per target
    c.teacher_substeps = 4  # RK4 steps per teacher jump (teacher map from a velocity)
    c.intermediate = "uniform"  # psd: u ~ U[s, t] | midpoint
    c.zero_init_output = False
    # Teacher velocity (teacher objectives): trained here with the fm/model/train
    # settings for teacher_steps unless teacher_workdir holds a saved teacher.
    c.teacher_workdir = ""
    c.teacher_steps = 5_000
    # Evaluation: flow-map steps K (network calls per sample).
    c.sample_steps = (1, 2, 4, 8)
    return c
