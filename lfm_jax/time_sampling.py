"""Samplers of training times t in [0, 1] (and of (s, t) pairs for flow maps).

Each sampler is `sample(key, n) -> (n,)`. Chosen by name outside jit.
"""

from __future__ import annotations

import functools

import jax


def uniform(key, n, eps: float = 0.0):
    """t ~ U[eps, 1 - eps]."""
    return jax.random.uniform(key, (n,), minval=eps, maxval=1.0 - eps)


def beta(key, n, a: float = 1.0, b: float = 1.0):
    """t ~ Beta(a, b)."""
    return jax.random.beta(key, a, b, (n,))


def get(name: str, **kwargs):
    """Time sampler by name: 'uniform' (eps) or 'beta' (a, b)."""
    samplers = {"uniform": uniform, "beta": beta}
    if name not in samplers:
        raise ValueError(f"unknown time sampler {name!r}; known: {sorted(samplers)}")
    return functools.partial(samplers[name], **kwargs)
