"""Defaults of the `lfm` config section (Local Flow Matching, docs/maths.md
section 3).

Blocks: N = num_blocks. OU step sizes h_n = step_c * step_rho^(n-1) for the OU
blocks, or the explicit tuple `step_sizes` (then num_blocks = 0 means
len(step_sizes) + free_last_block). With free_last_block, block N is an ordinary
flow-matching block to N(0, I) (h = inf).

Training: each block runs `steps_per_block` optimiser steps (config.train holds
batch size, lr, schedule, EMA, steps_per_call, checkpoint interval; the lr schedule
restarts in every block). The model's maps T_n use the EMA params when
config.eval.use_ema. Pushing the data through a trained block uses the push_ode
options (num_steps 0: adaptive); the final test NLL and samples use config.eval.ode.
Each OU pair is used for `times_per_pair` times t (the official code: 10 on GAS, 4 on
MINIBOONE).
"""

import ml_collections

from configs import ode_defaults


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_blocks = 4
    c.step_c = 0.025  # h_1
    c.step_rho = 1.25  # h_{n+1} / h_n
    c.step_sizes = ()  # explicit OU step sizes; () means geometric
    c.free_last_block = False
    c.warm_start = True  # block n starts from block n-1's (raw) params
    c.interpolant = "linear"  # linear | trig
    c.time_sampler = "uniform"  # uniform | beta
    c.beta_a = 1.0
    c.beta_b = 1.0
    c.steps_per_block = 1_000
    c.times_per_pair = 1  # times t drawn per OU pair (flow_matching.make_loss)
    # ODE used to push the train / val sets through each trained block.
    c.push_ode = ode_defaults.get_config()
    c.chunk_size = 2_000  # examples per device call when pushing / scoring
    # Per-block report: NLL of the truncated model on this many validation points.
    c.n_val = 2_000
    c.divergence = "exact"  # exact | hutchinson (per-block val NLL and test NLL)
    c.n_probes = 1
    return c
