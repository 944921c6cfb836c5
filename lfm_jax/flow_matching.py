"""Flow matching (docs/maths.md section 2): learn b(t, x) = E[dI_t | I_t = x] from pairs.

One loss factory, `make_loss(velocity, interp, time_sampler, pair_sampler)`, for
`lfm_jax.train.make_train_step`: the per-example `losses.flow_matching` on pairs
(x0, x1) drawn by a pair sampler `pair_sampler(key, batch) -> (x0, x1)`, each of shape
(B, ...). The pair sampler is the only thing that differs between methods:

- `gaussian_pairs(coupling)`: plain (global) flow matching, noise x0 ~ N(0, I) at
  t = 0 and data x1 = batch at t = 1, coupled by a minibatch coupling;
- `lfm.ou_pairs()`: a Local Flow Matching block, data x_l at t = 0 and its
  Ornstein-Uhlenbeck step x_r at t = 1.

`sample` and `log_prob` solve the plain-FM flow with `lfm_jax.ode` (noise at t = 0,
data at t = 1).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from lfm_jax import couplings as couplings_lib
from lfm_jax import data as data_lib
from lfm_jax import losses, ode

PairSampler = Callable  # (key, batch) -> (x0 (B, ...), x1 (B, ...))


def gaussian_pairs(coupling: Callable = couplings_lib.independent) -> PairSampler:
    """Pair sampler of plain flow matching: (key, x1 (B, ...)) -> (x0, x1).

    x0 ~ N(0, I) of x1's shape and dtype, then (x0, x1) = coupling(key, x0, x1)
    (`lfm_jax.couplings`: independent, or a minibatch optimal-transport pairing).
    A labelled batch {"x": x1, "y": labels} pairs its "x"."""

    def sample_pairs(key, x1):
        x1 = x1["x"] if isinstance(x1, dict) else x1
        k_noise, k_couple = jax.random.split(key)
        x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
        return coupling(k_couple, x0, x1)

    return sample_pairs


def make_loss(velocity: Callable, interp, time_sampler: Callable,
              pair_sampler: Optional[PairSampler] = None, *,
              times_per_pair: int = 1, labels: Optional[Callable] = None,
              dropout: bool = False) -> Callable:
    """Batch loss (params, key, batch) -> (mean flow-matching loss, {}).

    With (x0, x1) = pair_sampler(k_pair, batch) (B pairs; default `gaussian_pairs()`)
    and k = times_per_pair times t_{i,1..k} ~ time_sampler per pair (B * k draws),

        loss = (1/B) sum_i (1/k) sum_j | b(t_ij, I_{t_ij}) - dI_{t_ij} |^2,

    I the interpolant `interp` between x0_i and x1_i and b = velocity(params, ., .) of
    ONE example. k > 1 reuses each pair for k times (the official LFM code does so on
    GAS and MINIBOONE, with k = 10 and 4): the same expectation, lower variance per
    pair drawn. The minimiser is b(t, x) = E[dI_t | I_t = x].

    labels: optional (key, batch) -> (B,) class labels passed as velocity(params, t,
    x, y) (e.g. with label dropout for classifier-free guidance). dropout: call
    velocity(..., dropout_key=k_i) with one key per pair, k_i from fold_in(key, 2)
    (networks with dropout, e.g. `unet.velocity_unet`: on in training only).
    """
    pair_sampler = gaussian_pairs() if pair_sampler is None else pair_sampler
    k = int(times_per_pair)
    if k < 1:
        raise ValueError(f"times_per_pair must be >= 1, got {times_per_pair}")

    def per_pair(params, ts, a, c, y, kd):
        extra = () if y is None else (y,)
        opts = {} if kd is None else {"dropout_key": kd}

        def b(t_, x_):
            return velocity(params, t_, x_, *extra, **opts)

        return jnp.mean(jax.vmap(lambda t_: losses.flow_matching(b, interp, t_, a, c))(ts))

    def loss_fn(params, key, batch):
        k_pair, k_time = jax.random.split(key)
        x0, x1 = pair_sampler(k_pair, batch)
        n = x0.shape[0]
        t = time_sampler(k_time, n * k).astype(x0.dtype).reshape(n, k)
        y = None if labels is None else labels(jax.random.fold_in(key, 1), batch)
        kd = jax.random.split(jax.random.fold_in(key, 2), n) if dropout else None
        per = jax.vmap(functools.partial(per_pair, params),
                       in_axes=(0, 0, 0, None if y is None else 0, None if kd is None else 0))
        return jnp.mean(per(t, x0, x1, y, kd)), {}

    return loss_fn


def make_sample_batch(batch_size: int) -> Callable:
    """(key, data (n, ...)) -> batch (batch_size, ...), rows drawn with replacement
    (`lfm_jax.data.sample_batch`)."""
    return functools.partial(data_lib.sample_batch, batch_size=batch_size)


def sample(velocity: Callable, params, z, *, options: ode.Options = ode.Options(),
           chunk_size: Optional[int] = None):
    """Samples of plain flow matching from start noise z (n, *example_shape).

    Time direction: noise at t = 0, data at t = 1; z is integrated from t = 0 to
    t = 1 by dx/dt = velocity(params, t, x) (`ode.integrate` with `options`).
    Returns (n, *example_shape)."""
    return ode.integrate(jax.tree_util.Partial(velocity, params), z, 0.0, 1.0,
                         options=options, chunk_size=chunk_size)


def log_prob(velocity: Callable, params, x, **kwargs):
    """log-density (nats) of data points x (n, ...) under the plain-FM flow (noise
    N(0, I) at t = 0, data at t = 1): `ode.log_prob(..., t_data=1, t_base=0)`;
    kwargs (options, method, key, chunk_size, indices, ...) go to `ode.log_prob`."""
    return ode.log_prob(jax.tree_util.Partial(velocity, params), x,
                        ode.standard_normal_log_prob, t_data=1.0, t_base=0.0, **kwargs)
