"""One call from arrays to a trained model, without a workdir or a ConfigDict.

    from lfm_jax import recipes
    flow = recipes.fit_local_flow(x_train, step_sizes=(0.15, 0.3, 0.6), seed=0)
    samples = flow.generate(jax.random.PRNGKey(1), 1000)      # (1000, d)
    log_q = flow.log_prob(x_test)                              # (n,) nats

`fit_local_flow` trains Local Flow Matching blocks in turn (docs/maths.md section 3):
block n does flow matching on the OU pair (x_l, x_r) with x_l the training set pushed
through blocks 1..n-1 (`flow_matching.make_loss(..., lfm.ou_pairs)`, the same loss
and fused, mesh-sharded train step as the command-line job), then the training set is
pushed through the trained block with an adaptive diffrax solve. Nothing is written
to disk and nothing is checkpointed: for long runs that must resume after a kill, use
the job (`python -m experiments.train --config configs/lfm_checkerboard.py`, or
`lfm_jax.runs.lfm_blocks.train_blocks`).

Choices, as in the job's defaults: linear interpolant, t ~ U[0, 1], Adam with a cosine
schedule and gradient clipping 1.0, EMA of the params (decay warmed up, `train.ema_update`)
used for the maps, warm start of block n from block n-1's raw params, a free last
block (x_r ~ N(0, I) independent of x_l) after the OU blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import distributed, flow_matching, interpolants, lfm, networks, ode
from lfm_jax import time_sampling, train

__all__ = ["FittedLocalFlow", "fit_local_flow"]


@dataclasses.dataclass(frozen=True)
class FittedLocalFlow:
    """A trained local flow: `model` (its N blocks) and one params pytree per block.

    `val_nll` holds, when validation data was given, the validation NLL (nats) of the
    base N(0, I) and of the model truncated after each block (N + 1 values)."""

    model: lfm.LocalFlow
    params_list: tuple
    val_nll: Optional[tuple] = None

    def generate(self, key, n: int) -> np.ndarray:
        """n samples (n, *example_shape): noise z ~ N(0, I) run backward through
        the blocks (noise at t = 1 of block N, data at t = 0 of block 1)."""
        z = jax.random.normal(key, (n,) + tuple(self.model.example_shape))
        return self.model.generate(self.params_list, z)

    def log_prob(self, x, **kwargs) -> np.ndarray:
        """log q(x) in nats for x (n, *example_shape) (`LocalFlow.log_prob`)."""
        return self.model.log_prob(self.params_list, np.asarray(x), **kwargs)


def fit_local_flow(x_train, *, x_val=None, step_sizes: Sequence[float] = (0.15, 0.3, 0.6),
                   free_last_block: bool = True, hidden: Sequence[int] = (256, 256, 256),
                   steps_per_block: int = 2_000, batch_size: int = 512,
                   lr: float = 1e-3, steps_per_call: int = 100, ema_decay: float = 0.99,
                   ode_options: ode.Options = ode.Options(rtol=1e-4, atol=1e-4),
                   seed: int = 0, mesh=None, verbose: bool = False) -> FittedLocalFlow:
    """Train a local flow on x_train (n, d) (finite values; checked first).

    Args:
      x_train: training data, (n, d).
      x_val: optional validation data (m, d): the NLL after every block is computed,
        and a warning is printed when a block makes it worse.
      step_sizes: OU step sizes h_1..h_L; with free_last_block a free block follows
        (L + 1 blocks in all).
      hidden, steps_per_block, batch_size, lr, steps_per_call, ema_decay: the MLP of
        every block and its training (steps_per_call steps fused per compiled call;
        steps_per_block must be a multiple of it).
      ode_options: solves of the pushes, generation and likelihood.
      seed: all randomness (init, batches, OU noise) derives from PRNGKey(seed).
      mesh: device mesh (default: all devices); batch_size must divide over it.
    Returns:
      `FittedLocalFlow`.
    """
    x = data_lib.validate(np.asarray(x_train, np.float32), name="x_train")
    if x_val is not None:
        x_val = data_lib.validate(np.asarray(x_val, np.float32), x.shape[1], name="x_val")
    if steps_per_block < 1 or steps_per_block % steps_per_call:
        raise ValueError(f"steps_per_block ({steps_per_block}) must be a positive multiple "
                         f"of steps_per_call ({steps_per_call})")
    mesh = distributed.make_mesh() if mesh is None else mesh
    distributed.check_batch_size(batch_size, mesh)
    hs = lfm.step_sizes(0, explicit=tuple(step_sizes), free_last_block=free_last_block)
    shape = tuple(x.shape[1:])
    net = networks.velocity_mlp(shape, hidden=tuple(hidden))
    model = lfm.LocalFlow(net.apply, hs, shape, ode=ode_options)
    opt = train.make_optimizer(lr=lr, schedule="cosine", warmup_steps=0,
                               total_steps=steps_per_block, grad_clip=1.0)
    loss = flow_matching.make_loss(net.apply, interpolants.linear(),
                                   time_sampling.get("uniform"), lfm.ou_pairs)
    step = train.make_train_step(loss, opt, sample_batch=lfm.make_sample_batch(batch_size),
                                 steps_per_call=steps_per_call, ema_decay=ema_decay,
                                 mesh=mesh)
    key = jax.random.PRNGKey(seed)
    init = net.init(jax.random.fold_in(key, 0))
    params_list = []
    val_nll = None if x_val is None else [float(-np.mean(model.base_log_prob(x_val)))]
    v, logdet = x_val, 0.0  # validation points pushed so far, their summed log-dets
    for n, h in enumerate(hs, start=1):
        state = train.create_train_state(jax.random.fold_in(key, n), init, opt, mesh=mesh)
        data = distributed.replicate({"x": x, "h": np.asarray(h, x.dtype)}, mesh)
        state, _ = train.fit(state, step, data, steps_per_block, steps_per_call=steps_per_call)
        init = jax.device_get(state.params)  # warm start of the next block
        params_list.append(jax.device_get(state.ema_params))
        x = model.block_map(params_list[-1], x, mesh=mesh)
        if val_nll is not None:  # log q_n(x) = log N(T_n..T_1 x) + sum of log-dets
            v, delta = model.block_log_det(params_list[-1], v, mesh=mesh)
            logdet = logdet + delta
            val_nll.append(float(-np.mean(model.base_log_prob(v, mesh=mesh) + logdet)))
            if val_nll[-1] > val_nll[-2]:
                print(f"WARNING: block {n} made the validation NLL worse "
                      f"({val_nll[-2]:.4f} -> {val_nll[-1]:.4f} nats)", flush=True)
        if verbose:
            extra = "" if val_nll is None else f", val NLL {val_nll[-1]:.4f}"
            print(f"block {n}/{len(hs)} (h = {h}) trained{extra}", flush=True)
    return FittedLocalFlow(model, tuple(params_list),
                           None if val_nll is None else tuple(val_nll))
