"""Sample-based distances and likelihood metrics, all in jax (jittable, float32 safe).

Two-sample distances take x (n, d) and y (m, d). Pairwise terms are summed over row
blocks of x (`distributed.map_in_chunks`), so memory is O(chunk_size * m), never O(n * m).
Squared distances use |a|^2 + |b|^2 - 2 a.b at HIGHEST matmul precision on data
centred at the pooled mean, clipped at 0; self-pairs are excluded exactly by index.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from lfm_jax import distributed

__all__ = [
    "energy_distance",
    "mmd",
    "sliced_wasserstein",
    "nll",
    "bits_per_dim",
    "entropy_floor",
]

DEFAULT_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _pair_sum(x: jax.Array, y: jax.Array, fn: Callable, chunk_size: int,
              exclude_diagonal: bool) -> jax.Array:
    """sum_{i, j} fn(|x_i - y_j|^2), skipping i == j if `exclude_diagonal`.

    x (n, d), y (m, d) -> scalar; fn maps an (c, m) array of squared distances
    elementwise. Row sums are computed over row blocks of x of size `chunk_size`
    (`distributed.map_in_chunks`), then added.
    """
    y_sq = jnp.sum(y * y, axis=-1)
    cols = jnp.arange(y.shape[0])

    def row_sums(chunk):
        xb, rows = chunk
        cross = jnp.matmul(xb, y.T, precision=jax.lax.Precision.HIGHEST)
        d2 = jnp.sum(xb * xb, axis=-1)[:, None] + y_sq[None, :] - 2.0 * cross
        vals = fn(jnp.maximum(d2, 0.0))
        if exclude_diagonal:
            vals = jnp.where(rows[:, None] != cols[None, :], vals, 0.0)
        return jnp.sum(vals, axis=1)

    rows = jnp.arange(x.shape[0])
    return jnp.sum(distributed.map_in_chunks(row_sums, (x, rows), chunk_size))


def _centre(x: jax.Array, y: jax.Array):
    mean = jnp.mean(jnp.concatenate([x, y], axis=0), axis=0, keepdims=True)
    return x - mean, y - mean


def _check_pair(x, y):
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected x (n, d) and y (m, d), got {x.shape} and {y.shape}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"need at least 2 samples each, got {x.shape[0]} and {y.shape[0]}")


@partial(jax.jit, static_argnames=("chunk_size",))
def energy_distance(x: jax.Array, y: jax.Array, chunk_size: int = 1024,
                    biased: bool = False) -> jax.Array:
    """Squared energy distance D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|.

    x (n, d), y (m, d) -> scalar. The cross term is the mean over all n m pairs.
    biased=False: the within-sample terms are unbiased U-statistics (mean over
    i != j), so the estimate is unbiased and fluctuates around 0 (CAN BE NEGATIVE)
    when X and Y have the same law. biased=True: the V-statistic (mean over all
    i, j, self-pairs included), the energy distance between the two empirical
    laws: never negative, biased upwards by about (E|X - X'|/n + E|Y - Y'|/m).
    D^2 = 0 iff the laws are equal.
    """
    _check_pair(x, y)
    x, y = _centre(x, y)
    n, m = x.shape[0], y.shape[0]
    dist = jnp.sqrt
    exy = _pair_sum(x, y, dist, chunk_size, False) / (n * m)
    # biased may be traced: both estimates share one compiled function
    exx = _pair_sum(x, x, dist, chunk_size, True) / jnp.where(biased, n * n, n * (n - 1))
    eyy = _pair_sum(y, y, dist, chunk_size, True) / jnp.where(biased, m * m, m * (m - 1))
    return 2.0 * exy - exx - eyy


@partial(jax.jit, static_argnames=("bandwidths", "chunk_size"))
def mmd(x: jax.Array, y: jax.Array, bandwidths: tuple = DEFAULT_BANDWIDTHS,
        chunk_size: int = 1024) -> jax.Array:
    """Unbiased squared MMD with a multi-scale RBF kernel.

    k(a, b) = (1/L) sum_l exp(-|a - b|^2 / (2 h_l^2)), h_l in `bandwidths` (a tuple,
    in data units). MMD^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j)
    - 2 mean_{i,j} k(x_i, y_j). x (n, d), y (m, d) -> scalar.
    """
    _check_pair(x, y)
    x, y = _centre(x, y)
    n, m = x.shape[0], y.shape[0]
    inv = [1.0 / (2.0 * h * h) for h in bandwidths]

    def kernel(d2):
        return sum(jnp.exp(-d2 * c) for c in inv) / len(inv)

    kxy = _pair_sum(x, y, kernel, chunk_size, False) / (n * m)
    kxx = _pair_sum(x, x, kernel, chunk_size, True) / (n * (n - 1))
    kyy = _pair_sum(y, y, kernel, chunk_size, True) / (m * (m - 1))
    return kxx + kyy - 2.0 * kxy


@partial(jax.jit, static_argnames=("n_projections", "p"))
def sliced_wasserstein(key: jax.Array, x: jax.Array, y: jax.Array,
                       n_projections: int = 128, p: int = 2) -> jax.Array:
    """Sliced p-Wasserstein distance between two samples (ott-jax's 1-D solvers).

    SW_p = ( E_theta W_p^p(theta # X, theta # Y) )^(1/p), theta uniform on the unit
    sphere, estimated with n_projections Monte-Carlo directions drawn from `key`.
    `ott.tools.sliced.sliced_wasserstein` returns the mean over directions of the 1-D
    costs W_p^p with ground cost |a - b|^p (`ott.geometry.costs.EuclideanP(p)`); this
    function takes its 1/p-th power. Equal sizes use ott's sorted-pairs solver
    (W_p^p = mean_i |x_(i) - y_(i)|^p); unequal sizes its quantile solver.
    Projections use HIGHEST matmul precision and the dtype of x.
    x (n, d), y (m, d) -> scalar. For X ~ N(0, I), Y ~ N(mu, I): SW_2 = |mu| / sqrt(d).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (n, d) and (m, d) samples, got {x.shape} and {y.shape}")
    from ott.geometry import costs  # imported here: ott takes seconds to import

    from ott.tools import sliced

    theta = jax.random.normal(key, (n_projections, x.shape[1]), dtype=x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)

    def project(z):
        return jnp.matmul(z, theta.T, precision=jax.lax.Precision.HIGHEST)

    sw_pp, _ = sliced.sliced_wasserstein(x, y, cost_fn=costs.EuclideanP(p), proj_fn=project)
    return sw_pp ** (1.0 / p)


def nll(log_prob_fn: Callable, x: jax.Array, batch_size: int = 1024):
    """Mean negative log-likelihood over examples and its standard error.

    log_prob_fn: per-example x (D,) -> scalar log q(x) (vmapped here, in chunks of
    batch_size via lax.map). x (n, D). Returns (mean, stderr) jax scalars in nats:
    mean = -(1/n) sum_i log q(x_i), stderr = std_i(log q(x_i)) / sqrt(n).
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    log_q = distributed.map_in_chunks(jax.vmap(log_prob_fn), x, batch_size)
    stderr = jnp.std(log_q, ddof=1) / math.sqrt(n) if n > 1 else jnp.zeros(())
    return -jnp.mean(log_q), stderr


def bits_per_dim(nll_nats, dim: int):
    """NLL in nats per example -> bits per dimension: nll / (dim log 2).

    (For dequantised 8-bit images, add log(256) * dim to a density on [0, 1]^D-scaled
    data before converting, or pass the NLL of the data in [0, 256)^D.)
    """
    return nll_nats / (dim * math.log(2.0))


def entropy_floor(dataset, batch_size: int = 4096) -> Optional[float]:
    """The data entropy H(p) = -E_p log p(X) in nats, the floor of any model's NLL.

    Returns `dataset.entropy` when a closed form is known; else, when
    `dataset.log_prob` exists, the Monte-Carlo estimate -mean log p over all splits
    pooled (train, val, test are i.i.d. draws from p); else None.
    """
    if getattr(dataset, "entropy", None) is not None:
        return float(dataset.entropy)
    if getattr(dataset, "log_prob", None) is None:
        return None
    pooled = jnp.concatenate(
        [jnp.asarray(dataset.train), jnp.asarray(dataset.val), jnp.asarray(dataset.test)],
        axis=0)
    mean, _ = nll(dataset.log_prob, pooled, batch_size=batch_size)
    return float(mean)
