"""Local Flow Matching (LFM, Xu, Cheng and Xie, arXiv 2410.02548;
docs/maths.md section 3).

A local flow is N invertible blocks T_1, ..., T_N that carry data towards N(0, I)
by small steps. Block n carries x_l ~ q_{n-1} (data pushed through T_1..T_{n-1};
q_0 = data) at t = 0 to its Ornstein-Uhlenbeck (OU) step at t = 1,

    x_r = exp(-h_n) x_l + sqrt(1 - exp(-2 h_n)) z,   z ~ N(0, I),

so its velocity field v_n is learned by flow matching on the pair (x0, x1) =
(x_l, x_r) and T_n(x) is the solution at t = 1 of dx/dt = v_n(t, x), x(0) = x.
A "free" block has h = inf: x_r ~ N(0, I) independent of x_l, an ordinary
flow-matching block to the Gaussian (`step_sizes(..., free_last_block=True)`).

Generation: z ~ N(0, I), x = T_1^{-1}( ... T_N^{-1}(z)) (each inverse integrates
its block's ODE from t = 1 back to 0). Likelihood (nats):

    log q(x) = log N(T(x); 0, I) + sum_n int_0^1 div v_n(t, x_n(t)) dt,

x_n(t) the trajectory through block n. Truncating after n blocks,
q_n(x) = N(T_n...T_1(x); 0, I) |det d(T_n...T_1)/dx| is itself a normalised
density, reported after each block during training.

This module is pure maths on callables and arrays:
- `ou_step`, `ou_coefficients`, `ou_moments`, `step_sizes`, `cumulative_ou_time`;
- `ou_pairs`, `make_sample_batch`: the block's pair sampler and batch sampler; its
  training loss is `flow_matching.make_loss(velocity, interp, time_sampler, ou_pairs)`
  for `lfm_jax.train.make_train_step`;
- `gaussian_block_velocity`: the exact (affine) field of a block for Gaussian data;
- `LocalFlow`: N blocks sharing one velocity function, one params pytree per block:
  `push_forward`, `push_backward`, `generate`, `log_prob`, `block_log_det`;
- `moment_check`, `chi_square_diagnostics`: the checks of docs/maths.md section 3;
- `failed_rows`: which rows of a result are NaN/Inf (failed ODE solves).

Failed solves: `LocalFlow.ode.on_failure` is "raise" (default: one example whose
adaptive solve fails, e.g. by exhausting `max_steps`, raises and ends the whole call)
or "nan" (that example's outputs are NaN, the others are unaffected, and a NaN row
stays NaN through later blocks without being solved). Use "nan" for
evaluation (count the failures with `failed_rows`), never silently for data that
trains the next block.
Block-by-block training with checkpoints and resume is `lfm_jax.runs.lfm_blocks`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import distributed
from lfm_jax import ode as ode_lib

Velocity = Callable  # velocity(params, t, x) -> dx/dt for ONE example


# ----------------------------------------------------------------------------- OU

def ou_coefficients(h):
    """(a, s) = (exp(-h), sqrt(1 - exp(-2h))) of an OU step of length h.

    h = inf gives (0, 1): the step forgets x entirely (a free block).
    """
    h = jnp.asarray(h)
    return jnp.exp(-h), jnp.sqrt(-jnp.expm1(-2.0 * h))


def ou_step(key, x, h):
    """One exact step of dX = -X dt + sqrt(2) dW of length h.

    y = exp(-h) x + sqrt(1 - exp(-2h)) z, z ~ N(0, I).

    Args:
      key: PRNG key.
      x: (n, ...) batch (or one example when h is a scalar).
      h: scalar, or (n,) one step length per example.
    Returns:
      y, same shape and dtype as x.
    """
    x = jnp.asarray(x)
    h = jnp.asarray(h, x.dtype)
    if h.ndim == 1:
        h = h.reshape(h.shape + (1,) * (x.ndim - 1))
    a, s = ou_coefficients(h)
    z = jax.random.normal(key, x.shape, x.dtype)
    return a * x + s * z


def ou_moments(mean, cov, h):
    """Mean and covariance after an OU step: exp(-h) m, exp(-2h) C + (1 - exp(-2h)) I.

    mean (d,), cov (d, d) -> ((d,), (d, d)). h = inf gives (0, I).
    """
    a, s = ou_coefficients(h)
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
    return a * mean, a * a * cov + s * s * eye


def step_sizes(num_blocks: int, c: float = 0.025, rho: float = 1.25,
               explicit: Optional[Sequence[float]] = None,
               free_last_block: bool = False) -> tuple:
    """OU step sizes of the N blocks, a tuple of N floats.

    Geometric: h_n = c * rho^(n-1) for the OU blocks n = 1, 2, ...; or the given
    `explicit` list of OU step sizes. With `free_last_block`, block N is free and its
    entry is `math.inf` (x_r ~ N(0, I) independent of x_l), so N - 1 blocks are OU.

    Args:
      num_blocks: N, the total number of blocks (free block included). With
        `explicit`, 0 means len(explicit) + free_last_block; any other value must
        equal it.
    """
    n_ou = int(num_blocks) - int(bool(free_last_block))
    if explicit is not None and len(explicit) > 0:
        hs = tuple(float(h) for h in explicit)
        if num_blocks and len(hs) != n_ou:
            raise ValueError(f"{len(hs)} explicit step sizes for {num_blocks} blocks "
                             f"(free_last_block={free_last_block}): need {n_ou}")
    else:
        if n_ou < 0 or num_blocks < 1:
            raise ValueError(f"need at least one block, got num_blocks={num_blocks}")
        hs = tuple(float(c) * float(rho) ** k for k in range(n_ou))
    if any(not h > 0 for h in hs):
        raise ValueError(f"OU step sizes must be positive, got {hs}")
    return hs + ((math.inf,) if free_last_block else ())


def cumulative_ou_time(hs: Sequence[float]) -> np.ndarray:
    """H_n = h_1 + ... + h_n for n = 0..N, shape (N + 1,) (inf after a free block)."""
    return np.concatenate([[0.0], np.cumsum(np.asarray(hs, np.float64))])


# ------------------------------------------------------------------ pairs and batches

def make_sample_batch(batch_size: int, sampler: Optional[Callable] = None) -> Callable:
    """Device-side batch sampler for `train.make_train_step`.

    data = {"x": (n, ...) pushed data q_{n-1}, "h": scalar step size} (replicated),
    optionally with more row-aligned leaves such as class labels "y" (n,).
    Returns batch = {"x": (B, ...) rows drawn with replacement (the same rows of every
    row-aligned leaf), "h": (B,) the step size repeated}, so every leaf shards on its
    leading (batch) axis.

    With `sampler` ((key, n) -> (n, ...), `data.Dataset.sampler`), "x" is instead a
    fresh draw from the data distribution and data["x"] is ignored: only block 1 can
    use it (q_0 = data), since later blocks need data pushed through the earlier ones
    and keep the fixed pushed training set.
    """

    def sample_batch(key, data):
        if sampler is None:
            rows = {k: v for k, v in data.items() if k != "h"}
            batch = data_lib.sample_batch(key, rows, batch_size)
        else:
            batch = {"x": sampler(key, batch_size)}
        return {**batch, "h": jnp.full((batch_size,), data["h"], batch["x"].dtype)}

    return sample_batch


def ou_pairs(key, batch):
    """The OU pair sampler of a block, for `flow_matching.make_loss`.

    batch = {"x": x_l (B, ...), "h": (B,)} -> (x0, x1) = (x_l, x_r) with
    x_r = exp(-h) x_l + sqrt(1 - exp(-2h)) z (`ou_step`; x_r ~ N(0, I) independent of
    x_l when h = inf, a free block). The block loss is flow matching on this pair:
    `flow_matching.make_loss(velocity, interp, time_sampler, ou_pairs)`.
    """
    x_l = batch["x"]
    return x_l, ou_step(key, x_l, batch["h"])


def gaussian_block_velocity(interp) -> Velocity:
    """Exact field of a block whose input is Gaussian, as velocity(params, t, x).

    params = {"mean": m (d,), "cov": C (d, d), "h": h}: x_l ~ N(m, C) and
    x_r = a x_l + s z (a = exp(-h), s = sqrt(1 - a^2)). Then
    I_t = A x_l + B z and dI_t = A' x_l + B' z with A = alpha + beta a, B = beta s,
    A' = alpha' + beta' a, B' = beta' s, so (I_t, dI_t) is jointly Gaussian and

        v(t, x) = E[dI_t | I_t = x] = A' m + K_t S_t^{-1} (x - A m),
        S_t = A^2 C + B^2 I,  K_t = A A' C + B B' I.

    Its flow carries N(m, C) at t = 0 to N(a m, a^2 C + s^2 I) at t = 1 (the OU
    moments), so chaining blocks gives an exact local flow for Gaussian data.
    """

    def velocity(params, t, x):
        m, C, h = params["mean"], params["cov"], params["h"]
        a, s = ou_coefficients(h)
        A = interp.alpha(t) + interp.beta(t) * a
        B = interp.beta(t) * s
        dA = interp.dalpha(t) + interp.dbeta(t) * a
        dB = interp.dbeta(t) * s
        eye = jnp.eye(C.shape[0], dtype=C.dtype)
        S = A * A * C + B * B * eye
        K = A * dA * C + B * dB * eye
        return dA * m + K @ jnp.linalg.solve(S, x - A * m)

    return velocity


# ----------------------------------------------------------------------- the model

def _zero_log_prob(x):
    return jnp.zeros((), x.dtype)


@dataclasses.dataclass(frozen=True)
class LocalFlow:
    """N blocks of one velocity function, each with its own params pytree.

    Time direction: block n carries q_{n-1} at t = 0 (q_0 = data) to q_n at t = 1;
    after block N the points are (near) N(0, I). Pushing forward (data -> noise) runs
    each block from t = 0 to 1; generating runs the blocks backward from noise.

    Attributes:
      velocity: velocity(params, t, x) -> dx/dt for ONE example of `example_shape`
        (e.g. `networks.velocity_mlp(...).apply`, or `gaussian_block_velocity`).
      step_sizes: (N,) OU step sizes h_n (inf for a free block); defines N.
      example_shape: shape of one example, e.g. (d,).
      ode: the ODE options of every solve (`ode.Options`; on_failure "raise" or
        "nan": a failed solve of one example raises for the whole call, or makes that
        example NaN). A variant: `dataclasses.replace(model, ode=...)` (an equal
        model shares the cached compiled functions).
      chunk_size: examples per device call when pushing, generating or scoring.
    Every method taking `params_list` expects one params pytree per block (blocks
    1..len(params_list); fewer than N gives the truncated model).
    """

    velocity: Velocity
    step_sizes: tuple
    example_shape: tuple
    ode: ode_lib.Options = ode_lib.Options()
    chunk_size: int = 1000

    def __post_init__(self):
        if not isinstance(self.ode, ode_lib.Options):
            raise TypeError(f"LocalFlow.ode must be an ode.Options, got "
                            f"{type(self.ode).__name__}")

    @property
    def num_blocks(self) -> int:
        return len(self.step_sizes)

    @property
    def dim(self) -> int:
        return math.prod(self.example_shape)

    # -- one block -----------------------------------------------------------------
    def block_map(self, params, x, *, inverse: bool = False, mesh=None) -> np.ndarray:
        """T_n(x) (t: 0 -> 1) or T_n^{-1}(x) (t: 1 -> 0) for a batch x (n, ...).

        Rows are split over the mesh's devices (`distributed.sharded_map`),
        `chunk_size` per device call; compiled once per (model, direction, shape).
        With ode.on_failure="nan", rows whose solve failed are NaN."""
        return distributed.sharded_map(_block_map_fn(self, bool(inverse)), params, x,
                                       mesh=mesh, chunk_size=self.chunk_size)

    def block_log_det(self, params, x, *, method: str = "exact", key=None,
                      n_probes: int = 1, mesh=None):
        """(T_n(x), int_0^1 div v_n(t, x(t)) dt) for a batch x (n, ...).

        The integral is log q_{n-1}(x) - log q_n(T_n(x)) (nats), by
        `ode.log_prob(..., t_data=0, t_base=1)` with a zero base; shapes
        ((n, ...), (n,)). Hutchinson probes of example i are drawn from
        fold_in(key, i), i its GLOBAL index in x (`ode.log_prob`'s indices), so no
        two examples share probes and the result does not depend on chunk_size or on
        the number of devices. With ode.on_failure="nan", a row whose augmented solve
        failed (or whose x is already NaN) is NaN in both outputs.
        """
        if method != "exact" and key is None:
            raise ValueError(f"divergence method {method!r} needs a key")
        fn = _block_log_det_fn(self, method, int(n_probes))
        return distributed.sharded_map(fn, params, x, mesh=mesh,
                                       chunk_size=self.chunk_size, key=key)

    # -- all blocks -----------------------------------------------------------------
    def push_forward(self, params_list, x, *, mesh=None) -> np.ndarray:
        """T_k ... T_1(x) (data -> noise) for k = len(params_list); x (n, ...)."""
        for params in params_list:
            x = self.block_map(params, x, mesh=mesh)
        return x

    def push_backward(self, params_list, z, *, mesh=None) -> np.ndarray:
        """T_1^{-1} ... T_k^{-1}(z) (noise -> data); z (n, ...)."""
        for params in reversed(list(params_list)):
            z = self.block_map(params, z, inverse=True, mesh=mesh)
        return z

    def generate(self, params_list, z, *, mesh=None) -> np.ndarray:
        """Samples from start noise z (n, *example_shape), z ~ N(0, I).

        Time direction: noise at t = 1 of block N, data at t = 0 of block 1; z runs
        through the blocks backward, T_1^{-1}(... T_N^{-1}(z)) (`push_backward`).
        With ode.on_failure="nan", samples whose solve failed in any block are NaN
        rows (`failed_rows` finds them)."""
        z = np.asarray(z)
        if z.shape[1:] != tuple(self.example_shape):
            raise ValueError(f"start noise z has shape {z.shape}; expected "
                             f"(n, *{tuple(self.example_shape)})")
        return self.push_backward(params_list, z, mesh=mesh)

    def log_prob(self, params_list, x, *, method: str = "exact", key=None,
                 n_probes: int = 1, per_block: bool = False, mesh=None) -> np.ndarray:
        """log q(x) in nats, log N(T(x); 0, I) + sum_n int_0^1 div v_n dt.

        Args:
          x: (n, ...) points (data side, t = 0 of block 1).
          method: "exact" (Jacobian trace) or "hutchinson" (needs key).
          per_block: also return the truncated models.
        With ode.on_failure="nan", a point whose solve fails in block j is NaN from
        row j on (and in the result); the other points are unaffected. Count them
        with `np.isnan`.
        Returns:
          (n,), or with per_block (k + 1, n): row j is log q_j(x) of the model
          truncated after j blocks (row 0: N(x; 0, I); row k: the full model).
        """
        logdet = np.zeros(np.shape(x)[0], np.float64)
        rows = [self.base_log_prob(x, mesh=mesh)]
        for n, params in enumerate(params_list):
            bkey = None if key is None else jax.random.fold_in(key, n)
            x, delta = self.block_log_det(params, x, method=method, key=bkey,
                                          n_probes=n_probes, mesh=mesh)
            logdet = logdet + delta
            if per_block or n == len(params_list) - 1:
                rows.append(self.base_log_prob(x, mesh=mesh) + logdet)
        return np.stack(rows) if per_block else rows[-1]

    def base_log_prob(self, x, *, mesh=None) -> np.ndarray:
        """log N(x; 0, I) (nats, float64) of the rows of x (n, ...): the base density
        at the noise end, shape (n,)."""
        return distributed.sharded_map(_base_log_prob_fn, None, x, mesh=mesh,
                                       chunk_size=self.chunk_size).astype(np.float64)


@functools.lru_cache(maxsize=64)
def _block_map_fn(model: LocalFlow, inverse: bool):
    """(params, key, x (c, ...), idx) -> T_n(x) or T_n^{-1}(x), for `sharded_map`."""
    t0, t1 = (1.0, 0.0) if inverse else (0.0, 1.0)

    def fn(params, key, x, idx):
        b = jax.tree_util.Partial(model.velocity, params)
        return ode_lib.integrate(b, x, t0, t1, options=model.ode)

    return fn


@functools.lru_cache(maxsize=64)
def _block_log_det_fn(model: LocalFlow, method: str, n_probes: int):
    """(params, key, x (c, ...), idx (c,)) -> (T_n(x), int div v_n dt), for `sharded_map`.

    Each example solves its own augmented ODE (`ode.log_prob`) with probes keyed by
    fold_in(key, idx[i]): the global example index."""

    def fn(params, key, x, idx):
        b = jax.tree_util.Partial(model.velocity, params)
        delta, x_next = ode_lib.log_prob(b, x, _zero_log_prob, options=model.ode,
                                         t_data=0.0, t_base=1.0, method=method, key=key,
                                         n_probes=n_probes, indices=idx, return_base=True)
        return x_next, delta

    return fn


def _base_log_prob_fn(params, key, x, idx):
    return jax.vmap(ode_lib.standard_normal_log_prob)(x)


# ----------------------------------------------------------------------- diagnostics

def failed_rows(x) -> np.ndarray:
    """(n,) bool: rows of x (n, ...) with any NaN or Inf entry, i.e. the examples
    whose ODE solve failed under on_failure="nan"."""
    x = np.asarray(x)
    return ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)


def moment_check(x_prev, x_next, h) -> dict:
    """Compare the moments of pushed samples with the OU prediction (docs/maths.md section 3).

    x_prev (n, d) ~ q_{n-1}, x_next = T_n(x_prev) (n, d). The exact block carries
    mean m and covariance C to exp(-h) m and exp(-2h) C + (1 - exp(-2h)) I.
    Returns max-abs and relative Frobenius errors of mean and covariance (floats).
    """
    x_prev = np.asarray(x_prev, np.float64).reshape(len(x_prev), -1)
    x_next = np.asarray(x_next, np.float64).reshape(len(x_next), -1)
    m, C = x_prev.mean(0), np.atleast_2d(np.cov(x_prev, rowvar=False))
    a, s = math.exp(-h), math.sqrt(-math.expm1(-2.0 * h))
    m_pred, C_pred = a * m, a * a * C + s * s * np.eye(len(m))
    m_obs, C_obs = x_next.mean(0), np.atleast_2d(np.cov(x_next, rowvar=False))
    return {
        "mean_err_max": float(np.max(np.abs(m_obs - m_pred))),
        "cov_err_max": float(np.max(np.abs(C_obs - C_pred))),
        "cov_err_rel": float(np.linalg.norm(C_obs - C_pred) / np.linalg.norm(C_pred)),
        "mean_norm_pred": float(np.linalg.norm(m_pred)),
        "cov_trace_pred": float(np.trace(C_pred)),
        "cov_trace_obs": float(np.trace(C_obs)),
    }


def chi_square_diagnostics(log_p, log_q) -> dict:
    """Excess NLL and chi-square of p_data against a model q, from samples x_i ~ p.

    With r_i = log p(x_i) - log q(x_i):
      excess NLL = mean_i r_i, an estimate of KL(p || q) = NLL_q - H(p);
      chi2(p || q) = E_p[p / q] - 1, estimated by mean_i exp(r_i) - 1
    (unbiased but heavy-tailed: a few points where q is small dominate). Standard
    errors are std / sqrt(n). Inputs (n,) in nats; returns floats.
    """
    r = np.asarray(log_p, np.float64) - np.asarray(log_q, np.float64)
    r = r[np.isfinite(r)]
    n = max(len(r), 1)
    shift = np.max(r) if len(r) else 0.0
    w = np.exp(r - shift)
    ratio_mean = float(np.exp(shift) * np.mean(w)) if len(r) else float("nan")
    ratio_se = float(np.exp(shift) * np.std(w, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {
        "excess_nll": float(np.mean(r)) if len(r) else float("nan"),
        "excess_nll_stderr": float(np.std(r, ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "chi2": ratio_mean - 1.0,
        "chi2_stderr": ratio_se,
    }
