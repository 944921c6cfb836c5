"""Classifier-free guidance and label dropout (docs/maths.md section 6).

Guided field of a class-conditional network with null label ∅:

    v_w(t, x) = v(t, x, ∅) + w (v(t, x, y) - v(t, x, ∅)),

w = 0 the unconditional field, w = 1 the conditional one, w > 1 guidance. The same
combination applies to any output that is affine in the network's output, so for a
flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x) guiding the two-time network v_{s,t} is
the same as guiding the map: X_w = X_∅ + w (X_y - X_∅).

Both branches are evaluated in ONE network call on a batch of two ([y, ∅] under
`jax.vmap`), which batches the convolutions on an accelerator.

The closures bind (params, y, w) so they plug into the unconditional machinery:
`guided_velocity(net, params, y, w)` is a `b(t, x)` for `lfm_jax.ode.integrate`;
`guided_apply(net, y, w)` is an `apply(params, t, x)` with params still free, for
code that takes a velocity function and a params pytree (LFM blocks, one params
pytree per block). For a different label per example, vmap over (x, y) outside:
`jax.vmap(lambda x, y: ode.integrate(guided_velocity(net, p, y, w), x, batched=False))`.

Training: `drop_labels(key, y, p, null_label)` replaces each label by ∅ with
probability p, so one network learns both v(., y) and v(., ∅).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["guide", "guided_apply", "guided_velocity", "guided_two_time",
           "guided_flow_map", "drop_labels"]


def guide(fn: Callable, y, w, null) -> Callable:
    """Generic guidance: g(*args) = f_∅ + w (f_y - f_∅) with f_c = fn(*args, c).

    Two separate calls of fn; use it for conditions that cannot be stacked (e.g. y and
    null of different kinds). `guided_apply` batches both branches in one call.
    """
    def guided(*args):
        f_null = fn(*args, null)
        return f_null + w * (fn(*args, y) - f_null)
    return guided


def _null_label(network) -> int:
    null = getattr(network, "null_label", None)
    if null is None:
        raise ValueError("classifier-free guidance needs a class-conditional network with "
                         "a null label (num_classes set); this network has none")
    return int(null)


def guided_apply(network, y, w) -> Callable:
    """apply_w(params, *times, x) = v(.., x, ∅) + w (v(.., x, y) - v(.., x, ∅)).

    Args:
      network: a class-conditional `conditional.ConditionalNetwork` (U-Net or MLP,
        one or two times).
      y: int label of one example (scalar; may be traced).
      w: guidance weight (scalar; may be traced).
    Returns:
      apply_w(params, *times, x) -> array of x's shape, one network call on [y, ∅].
    """
    null = _null_label(network)

    def apply_w(params, *args):
        labels = jnp.stack([jnp.asarray(y, jnp.int32), jnp.asarray(null, jnp.int32)])
        both = jax.vmap(lambda lab: network.apply(params, *args, lab))(labels)
        cond, uncond = both[0], both[1]
        return uncond + jnp.asarray(w, uncond.dtype) * (cond - uncond)

    return apply_w


def guided_velocity(network, params, y, w) -> Callable:
    """b(t, x) = v_w(t, x) with (params, y, w) bound: a closure for ODE sampling."""
    return functools.partial(guided_apply(network, y, w), params)


def guided_two_time(network, params, y, w) -> Callable:
    """v_w(s, t, x) of a class-conditional two-time network, (params, y, w) bound."""
    return functools.partial(guided_apply(network, y, w), params)


def guided_flow_map(flow_map, params, y, w) -> Callable:
    """X_w(s, t, x) = x + (t - s) v_w(s, t, x) for a `flow_map.FlowMap` whose network is
    class-conditional (params as `FlowMap.init` returns them: {"net": ...}).

    A closure X(s, t, x) for `flow_map.sample`; equals X_∅ + w (X_y - X_∅).
    """
    v_w = guided_two_time(flow_map.network, params["net"], y, w)

    def X(s, t, x):
        return x + (t - s) * v_w(s, t, x)

    return X


def drop_labels(key, y, p: float, null_label: int):
    """Label dropout for classifier-free guidance: y_i -> null_label with probability p.

    y: int array of labels (any shape); independent Bernoulli(p) per entry from key.
    Returns an int32 array of y's shape.
    """
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout probability must be in [0, 1], got {p}")
    y = jnp.asarray(y, jnp.int32)
    drop = jax.random.bernoulli(key, p, y.shape)
    return jnp.where(drop, jnp.asarray(null_label, jnp.int32), y)
