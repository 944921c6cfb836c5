"""Samplers of training times t in [0, 1] (and of (s, t) pairs for flow maps).

Each sampler is `sample(key, n) -> (n,)`. Chosen by name outside jit (`get`).
The official Local Flow Matching runs draw t ~ U(0, 1) (torch.rand) except GAS,
t ~ Beta(1, 0.5) (mean 2/3: more weight near the noise end t = 1); one t per
(x_l, x_r) pair, or `num_tk` independent t per pair, averaged (`per_pair`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax


def uniform(key, n, eps: float = 0.0):
    """t ~ U[eps, 1 - eps]."""
    return jax.random.uniform(key, (n,), minval=eps, maxval=1.0 - eps)


def beta(key, n, a: float = 1.0, b: float = 1.0):
    """t ~ Beta(a, b): density t^(a-1) (1-t)^(b-1) / B(a, b), mean a / (a + b).

    a is the exponent at t = 0's factor t^(a-1), as torch.distributions.Beta(
    concentration1=a, concentration0=b) and scipy.stats.beta(a, b); a = b = 1 is U(0, 1).
    """
    return jax.random.beta(key, a, b, (n,))


def per_pair(sample: Callable, k: int) -> Callable:
    """k independent times per pair: (key, n) -> (n, k), t[i, j] iid from `sample`.

    A loss averaging over the k columns estimates the same expectation over t with
    k draws per (x0, x1) pair (the official code's `num_tk`). k = 1 gives (n, 1),
    the same numbers as `sample(key, n)[:, None]`.
    """
    if int(k) < 1:
        raise ValueError(f"times per pair must be >= 1, got {k}")
    k = int(k)

    def sample_k(key, n):
        return sample(key, n * k).reshape(n, k)

    return sample_k


def get(name: str, **kwargs):
    """Time sampler by name: 'uniform' (eps) or 'beta' (a, b)."""
    samplers = {"uniform": uniform, "beta": beta}
    if name not in samplers:
        raise ValueError(f"unknown time sampler {name!r}; known: {sorted(samplers)}")
    if name == "beta" and not (kwargs.get("a", 1.0) > 0 and kwargs.get("b", 1.0) > 0):
        raise ValueError(f"beta time sampler needs a > 0 and b > 0, got {kwargs}")
    if name == "uniform" and not 0.0 <= kwargs.get("eps", 0.0) < 0.5:
        raise ValueError(f"uniform time sampler needs 0 <= eps < 0.5, got {kwargs}")
    return functools.partial(samplers[name], **kwargs)
