"""Networks (Flax Linen), exposed only as pure functions of params.

- `velocity_mlp(...)` -> `Network` with `init(key) -> params` and
  `apply(params, t, x) -> dx/dt` for ONE example (t scalar, x of shape
  `example_shape`).
- `two_time_mlp(...)` -> `Network` with `apply(params, s, t, x)`, the raw two-time
  network used by `lfm_jax.flow_map` to build X_{s,t}(x) = x + (t - s) v_{s,t}(x).

Time enters through fixed Fourier features [t, sin(w_k t), cos(w_k t)] with
frequencies w_k geometrically spaced in [1, max_frequency] (radians per unit time),
concatenated to the flattened example before an MLP (SiLU by default).
The rest of the library never sees the Flax module, only `init` and `apply`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"silu": nn.silu, "gelu": nn.gelu, "relu": nn.relu, "tanh": jnp.tanh,
               "softplus": nn.softplus}


def fourier_features(t, num_frequencies: int = 8, max_frequency: float = 64.0):
    """[t, sin(w_k t), cos(w_k t)] for w_k = max_frequency^(k / (K-1)), shape (2K+1,)."""
    t = jnp.asarray(t, jnp.float32) if not jnp.issubdtype(jnp.asarray(t).dtype,
                                                          jnp.floating) else jnp.asarray(t)
    if num_frequencies == 0:
        return t[None]
    k = jnp.arange(num_frequencies, dtype=t.dtype)
    w = jnp.exp(k / max(num_frequencies - 1, 1) * math.log(max_frequency))
    return jnp.concatenate([t[None], jnp.sin(w * t), jnp.cos(w * t)])


class MLP(nn.Module):
    """MLP on [features(times...), x]: hidden widths, activation, linear output."""

    out_dim: int
    hidden: Sequence[int] = (256, 256, 256, 256)
    activation: str = "silu"
    num_frequencies: int = 8
    max_frequency: float = 64.0
    zero_init_output: bool = False

    @nn.compact
    def __call__(self, times, x):
        feats = [fourier_features(t, self.num_frequencies, self.max_frequency)
                 for t in times]
        h = jnp.concatenate(feats + [x.astype(feats[0].dtype)])
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        init = nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
        return nn.Dense(self.out_dim, kernel_init=init)(h)


@dataclasses.dataclass(frozen=True)
class Network:
    """A network as two pure functions.

    init: key -> params.
    apply: (params, *times, x) -> output of x's shape, for one example.
    """

    init: Callable
    apply: Callable
    example_shape: tuple
    num_params: Callable = None


def _count(params) -> int:
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def _make(example_shape, num_times, hidden, activation, num_frequencies,
          max_frequency, zero_init_output):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    example_shape = tuple(int(d) for d in example_shape)
    dim = math.prod(example_shape)
    module = MLP(out_dim=dim, hidden=tuple(int(w) for w in hidden), activation=activation,
                 num_frequencies=num_frequencies, max_frequency=max_frequency,
                 zero_init_output=zero_init_output)

    def apply(params, *args):
        *times, x = args
        if len(times) != num_times:
            raise TypeError(f"expected {num_times} time argument(s), got {len(times)}")
        if x.shape != example_shape:
            raise ValueError(f"network expects one example of shape {example_shape}, got "
                             f"{x.shape}; batch with jax.vmap")
        out = module.apply(params, times, x.reshape(-1))
        return out.reshape(example_shape).astype(x.dtype)

    def init(key):
        times = [jnp.zeros(())] * num_times
        return module.init(key, times, jnp.zeros((dim,)))

    return Network(init=init, apply=apply, example_shape=example_shape,
                   num_params=_count)


def velocity_mlp(example_shape, hidden=(256, 256, 256, 256), activation="silu",
                 num_frequencies=8, max_frequency=64.0, zero_init_output=False) -> Network:
    """Time-conditioned MLP velocity field: apply(params, t, x) -> (same shape as x)."""
    return _make(example_shape, 1, hidden, activation, num_frequencies, max_frequency,
                 zero_init_output)


def two_time_mlp(example_shape, hidden=(256, 256, 256, 256), activation="silu",
                 num_frequencies=8, max_frequency=64.0, zero_init_output=False) -> Network:
    """Two-time MLP: apply(params, s, t, x) -> (same shape as x)."""
    return _make(example_shape, 2, hidden, activation, num_frequencies, max_frequency,
                 zero_init_output)


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return _count(params)
