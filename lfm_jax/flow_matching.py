"""Plain (global) flow matching: noise x0 ~ N(0, I) at t = 0, data x1 at t = 1.

`make_loss` builds the batch-level loss for `lfm_jax.train.make_train_step` from the
per-example `losses.flow_matching`, vmapped; `sample` and `log_prob` use the
diffrax solvers of `lfm_jax.ode`.
"""

from __future__ import annotations

import functools

from typing import Callable

import jax
import jax.numpy as jnp

from lfm_jax import couplings as couplings_lib
from lfm_jax import data as data_lib
from lfm_jax import losses


def make_loss(velocity: Callable, interp, time_sampler: Callable,
              coupling: Callable = couplings_lib.independent) -> Callable:
    """Batch loss (params, key, x1_batch) -> (mean FM loss, {}).

    velocity: velocity(params, t, x) for one example; x0 ~ N(0, I) drawn inside.
    """

    def loss_fn(params, key, x1):
        k_noise, k_time, k_couple = jax.random.split(key, 3)
        x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
        x0, x1 = coupling(k_couple, x0, x1)
        t = time_sampler(k_time, x1.shape[0])
        b = lambda t_, x_: velocity(params, t_, x_)
        per_example = jax.vmap(lambda t_, a, c: losses.flow_matching(b, interp, t_, a, c))
        return jnp.mean(per_example(t, x0, x1)), {}

    return loss_fn


def make_sample_batch(batch_size: int) -> Callable:
    """(key, data (n, ...)) -> batch (batch_size, ...), rows drawn with replacement
    (`lfm_jax.data.sample_batch`)."""
    return functools.partial(data_lib.sample_batch, batch_size=batch_size)


def standard_normal_log_prob(x):
    """log N(x; 0, I) for one example, in nats."""
    return -0.5 * jnp.sum(x**2) - 0.5 * x.size * jnp.log(2 * jnp.pi)


def sample(velocity, params, key, n: int, example_shape, **ode_kwargs):
    """Generate n samples: x0 ~ N(0, I) integrated from t = 0 to t = 1."""
    from lfm_jax import ode

    x0 = jax.random.normal(key, (n, *example_shape))
    return ode.integrate(lambda t, x: velocity(params, t, x), x0, 0.0, 1.0, **ode_kwargs)


def log_prob(velocity, params, x, **ode_kwargs):
    """log-density (nats) of data points x (n, ...) under the learned flow."""
    from lfm_jax import ode

    return ode.log_prob(lambda t, y: velocity(params, t, y), x, standard_normal_log_prob,
                        t_data=1.0, t_base=0.0, **ode_kwargs)
