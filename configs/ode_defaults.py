"""Defaults of an ODE options section (config.eval.ode, config.lfm.push_ode), read by
`lfm_jax.ode.options_from_config`.

num_steps 0 means adaptive steps (rtol, atol). max_steps is the step limit of an
adaptive solve: a well-trained field with sharp features can need thousands of steps;
reaching the limit fails the solve.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.solver = "tsit5"  # a key of lfm_jax.ode.SOLVERS
    c.rtol = 1e-5
    c.atol = 1e-5
    c.num_steps = 0  # 0: adaptive (rtol, atol); else a fixed number of steps
    c.max_steps = 65_536
    return c
