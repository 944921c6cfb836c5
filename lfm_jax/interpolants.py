"""Stochastic interpolants I_t = alpha(t) x0 + beta(t) x1 + gamma(t) z (SPEC 2).

alpha(0) = beta(1) = 1, alpha(1) = beta(0) = 0 and gamma(0) = gamma(1) = 0, so
I_0 = x0 and I_1 = x1. Every coefficient is a function of a scalar time and is
paired with its derivative, so `interpolate` returns the velocity target
dI_t = alpha'(t) x0 + beta'(t) x1 + gamma'(t) z without autodiff.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

Scalar = Callable[[jnp.ndarray], jnp.ndarray]


def _zero(t):
    return jnp.zeros_like(t)


@dataclasses.dataclass(frozen=True)
class Interpolant:
    """Coefficients of I_t and their time derivatives, as functions of scalar t."""

    name: str
    alpha: Scalar
    beta: Scalar
    dalpha: Scalar
    dbeta: Scalar
    gamma: Scalar = _zero
    dgamma: Scalar = _zero

    @property
    def stochastic(self) -> bool:
        return self.gamma is not _zero


def _with_gamma(alpha, beta, dalpha, dbeta, name, gamma_scale, gamma_kind):
    if gamma_scale == 0.0:
        return Interpolant(name, alpha, beta, dalpha, dbeta)
    a = float(gamma_scale)
    if gamma_kind == "quadratic":
        # gamma = a t (1 - t): smooth derivative at both ends.
        gamma = lambda t: a * t * (1.0 - t)
        dgamma = lambda t: a * (1.0 - 2.0 * t)
    elif gamma_kind == "sqrt":
        # gamma = sqrt(a t (1 - t)); gamma' = a (1 - 2t) / (2 gamma) is infinite at
        # t = 0, 1, so the time argument is clipped to [1e-5, 1 - 1e-5] inside gamma'.
        gamma = lambda t: jnp.sqrt(a * t * (1.0 - t))
        def dgamma(t):
            tc = jnp.clip(t, 1e-5, 1.0 - 1e-5)
            return a * (1.0 - 2.0 * tc) / (2.0 * jnp.sqrt(a * tc * (1.0 - tc)))
    else:
        raise ValueError(f"unknown gamma kind {gamma_kind!r}; use 'quadratic' or 'sqrt'")
    return Interpolant(f"{name}+{gamma_kind}_gamma({a:g})", alpha, beta, dalpha, dbeta,
                       gamma, dgamma)


def linear(gamma_scale: float = 0.0, gamma_kind: str = "quadratic") -> Interpolant:
    """alpha = 1 - t, beta = t (rectified flow / CFM interpolant)."""
    return _with_gamma(
        lambda t: 1.0 - t, lambda t: t,
        lambda t: -jnp.ones_like(t), lambda t: jnp.ones_like(t),
        "linear", gamma_scale, gamma_kind)


def trig(gamma_scale: float = 0.0, gamma_kind: str = "quadratic") -> Interpolant:
    """alpha = cos(pi t / 2), beta = sin(pi t / 2) (variance preserving for
    independent standard endpoints)."""
    h = jnp.pi / 2
    return _with_gamma(
        lambda t: jnp.cos(h * t), lambda t: jnp.sin(h * t),
        lambda t: -h * jnp.sin(h * t), lambda t: h * jnp.cos(h * t),
        "trig", gamma_scale, gamma_kind)


INTERPOLANTS = {"linear": linear, "trig": trig}


def get(name: str, **kwargs) -> Interpolant:
    """Interpolant by name ('linear' or 'trig')."""
    if name not in INTERPOLANTS:
        raise ValueError(f"unknown interpolant {name!r}; known: {sorted(INTERPOLANTS)}")
    return INTERPOLANTS[name](**kwargs)


def interpolate(interp: Interpolant, t, x0, x1, z=None):
    """Return (I_t, dI_t/dt) for one example (or any broadcast-compatible arrays).

    Args:
      interp: the interpolant.
      t: scalar time in [0, 1].
      x0, x1: endpoints of the same shape.
      z: optional Gaussian noise of that shape; required when interp.gamma != 0.
    """
    if jnp.shape(x0) != jnp.shape(x1):
        raise ValueError(f"x0 and x1 must have the same shape, got {jnp.shape(x0)} "
                         f"and {jnp.shape(x1)}")
    x_t = interp.alpha(t) * x0 + interp.beta(t) * x1
    dx_t = interp.dalpha(t) * x0 + interp.dbeta(t) * x1
    if z is not None:
        x_t = x_t + interp.gamma(t) * z
        dx_t = dx_t + interp.dgamma(t) * z
    elif interp.stochastic:
        raise ValueError(f"interpolant {interp.name} has a gamma(t) z term: pass z")
    return x_t, dx_t
