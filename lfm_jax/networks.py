"""Networks (Flax Linen), exposed only as pure functions of params.

- `velocity_mlp(...)` -> `Network` with `init(key) -> params` and
  `apply(params, t, x) -> dx/dt` for ONE example (t scalar, x of shape
  `example_shape`).
- `two_time_mlp(...)` -> `Network` with `apply(params, s, t, x)`, the raw two-time
  network used by `lfm_jax.flow_map` to build X_{s,t}(x) = x + (t - s) v_{s,t}(x).

Time enters by `time_embedding`, a key of `TIME_EMBEDDINGS`:
- "fourier" (default): fixed features [t, sin(w_k t), cos(w_k t)] with frequencies w_k
  geometrically spaced in [1, max_frequency] (radians per unit time);
- "raw": t itself, one input, as the official Local Flow Matching code does
  (`torch.cat([t, x], 1)` before the first layer; docs/official_lfm.md).
The time features come first, then the flattened example, then an MLP of the
`hidden` widths with one activation (a key of `ACTIVATIONS`; SiLU by default;
"softplus" takes `softplus_beta`) and a linear output layer. `compute_dtype` (a key of
`COMPUTE_DTYPES`) sets the dtype of the layers' matrix products and activations; the
parameters and the output stay float32 (mixed precision).
The rest of the library never sees the Flax module, only `init` and `apply`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp



def softplus_beta(x, beta: float = 1.0):
    """softplus_beta(x) = log(1 + exp(beta x)) / beta, as torch.nn.Softplus(beta).

    Computed as jax.nn.softplus(beta x) / beta (logaddexp(beta x, 0), stable for
    large |x|). torch switches to the identity where beta x > 20; the two differ there
    by log(1 + exp(-beta x)) / beta < 1e-8 / beta. beta > 0; beta -> inf gives ReLU.
    """
    return jax.nn.softplus(beta * x) / beta


ACTIVATIONS = {"silu": nn.silu, "gelu": nn.gelu, "relu": nn.relu, "tanh": jnp.tanh,
               "softplus": softplus_beta, "elu": nn.elu}
"""Activation by name; "softplus" is `softplus_beta` (beta from the network's
`softplus_beta`, 1 = jax.nn.softplus), "elu" is ELU with alpha = 1 (torch.nn.ELU())."""


def fourier_features(t, num_frequencies: int = 8, max_frequency: float = 64.0):
    """[t, sin(w_k t), cos(w_k t)] for w_k = max_frequency^(k / (K-1)), shape (2K+1,)."""
    t = jnp.asarray(t, jnp.float32) if not jnp.issubdtype(jnp.asarray(t).dtype,
                                                          jnp.floating) else jnp.asarray(t)
    if num_frequencies == 0:
        return t[None]
    k = jnp.arange(num_frequencies, dtype=t.dtype)
    w = jnp.exp(k / max(num_frequencies - 1, 1) * math.log(max_frequency))
    return jnp.concatenate([t[None], jnp.sin(w * t), jnp.cos(w * t)])


def raw_time(t, num_frequencies: int = 0, max_frequency: float = 0.0):
    """[t], shape (1,): time as one raw input (the frequency arguments are ignored)."""
    del num_frequencies, max_frequency
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.float32)
    return t[None]


TIME_EMBEDDINGS = {"fourier": fourier_features, "raw": raw_time}
"""Time input by name: `embed(t, num_frequencies, max_frequency) -> (F,)`."""


WEIGHT_INITS = ("lecun", "torch")
"""Initialisations: "lecun" (flax's Dense: lecun_normal kernels, zero biases) or
"torch" (torch.nn.Linear's: kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
as in the official LFM code)."""


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
"""Dtype of the MLP's matrix products and activations, by name.

"float32" (default): no cast; the products run in the promoted dtype of the input and
the float32 params (float32; float64 for float64 inputs under jax_enable_x64; on a GPU,
XLA's default precision lets float32 products use TF32 tensor cores).
"bfloat16": each layer casts its input, kernel and bias to bfloat16 and multiplies in
bfloat16 (on a GPU the tensor cores accumulate in float32), returning bfloat16; the
activations are bfloat16, the params and their gradients float32, and the output is
cast back to the input's dtype.
About 3 significant digits per layer: meant for throughput at large batches."""


def _symmetric_uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class MLP(nn.Module):
    """MLP on [features(times...), x]: hidden widths, activation, linear output."""

    out_dim: int
    hidden: Sequence[int] = (256, 256, 256, 256)
    activation: str = "silu"
    num_frequencies: int = 8
    max_frequency: float = 64.0
    zero_init_output: bool = False
    time_embedding: str = "fourier"
    softplus_beta: float = 1.0
    weight_init: str = "lecun"
    compute_dtype: str = "float32"

    def _dense(self, width, fan_in, zero=False):
        dtypes = dict(dtype=COMPUTE_DTYPES[self.compute_dtype])
        if zero:
            return nn.Dense(width, kernel_init=nn.initializers.zeros, **dtypes)
        if self.weight_init == "torch":
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Dense(width, kernel_init=nn.initializers.variance_scaling(
                1.0 / 3.0, "fan_in", "uniform"), bias_init=_symmetric_uniform(bound),
                **dtypes)
        return nn.Dense(width, **dtypes)

    @nn.compact
    def __call__(self, times, x):
        embed = TIME_EMBEDDINGS[self.time_embedding]
        feats = [embed(t, self.num_frequencies, self.max_frequency) for t in times]
        h = jnp.concatenate(feats + [x.astype(feats[0].dtype)])
        act = ACTIVATIONS[self.activation]
        if self.activation == "softplus":
            act = functools.partial(softplus_beta, beta=self.softplus_beta)
        for width in self.hidden:
            h = act(self._dense(width, h.shape[-1])(h))
        return self._dense(self.out_dim, h.shape[-1], zero=self.zero_init_output)(h)


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
          max_frequency, zero_init_output, time_embedding, softplus_beta, weight_init,
          compute_dtype):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    if time_embedding not in TIME_EMBEDDINGS:
        raise ValueError(f"unknown time_embedding {time_embedding!r}; known: "
                         f"{sorted(TIME_EMBEDDINGS)}")
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init {weight_init!r}; known: {list(WEIGHT_INITS)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute_dtype {compute_dtype!r}; known: "
                         f"{sorted(COMPUTE_DTYPES)}")
    if not softplus_beta > 0:
        raise ValueError(f"softplus_beta must be > 0, got {softplus_beta}")
    example_shape = tuple(int(d) for d in example_shape)
    dim = math.prod(example_shape)
    module = MLP(out_dim=dim, hidden=tuple(int(w) for w in hidden), activation=activation,
                 num_frequencies=num_frequencies, max_frequency=max_frequency,
                 zero_init_output=zero_init_output, time_embedding=time_embedding,
                 softplus_beta=float(softplus_beta), weight_init=weight_init,
                 compute_dtype=compute_dtype)

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
                 num_frequencies=8, max_frequency=64.0, zero_init_output=False, *,
                 time_embedding: str = "fourier", softplus_beta: float = 1.0,
                 weight_init: str = "lecun", compute_dtype: str = "float32") -> Network:
    """Time-conditioned MLP velocity field: apply(params, t, x) -> (same shape as x).

    Input [embed(t), x.ravel()] with embed = TIME_EMBEDDINGS[time_embedding]
    ("fourier": 2 num_frequencies + 1 features, "raw": 1); len(hidden) hidden layers
    with ACTIVATIONS[activation] (softplus: log(1 + exp(beta h)) / beta with
    beta = softplus_beta); linear output (zero-initialised if zero_init_output).
    weight_init: a name in WEIGHT_INITS ("lecun" default, "torch" as torch.nn.Linear).
    compute_dtype: a name in COMPUTE_DTYPES ("float32" default; "bfloat16": bf16 matrix
    products and activations, float32 params and output).
    The official LFM network for 2-D data is hidden=(256,) * 3, activation="softplus",
    softplus_beta=20, time_embedding="raw", weight_init="torch".
    """
    return _make(example_shape, 1, hidden, activation, num_frequencies, max_frequency,
                 zero_init_output, time_embedding, softplus_beta, weight_init,
                 compute_dtype)


def two_time_mlp(example_shape, hidden=(256, 256, 256, 256), activation="silu",
                 num_frequencies=8, max_frequency=64.0, zero_init_output=False, *,
                 time_embedding: str = "fourier", softplus_beta: float = 1.0,
                 weight_init: str = "lecun", compute_dtype: str = "float32") -> Network:
    """Two-time MLP: apply(params, s, t, x) -> (same shape as x).

    Input [embed(s), embed(t), x.ravel()]; otherwise as `velocity_mlp`.
    """
    return _make(example_shape, 2, hidden, activation, num_frequencies, max_frequency,
                 zero_init_output, time_embedding, softplus_beta, weight_init,
                 compute_dtype)


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return _count(params)
