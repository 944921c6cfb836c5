"""Conditional networks and a conditional density with an exact log-density.

Conditioning (docs/maths.md section 6): a conditional velocity is
`velocity(params, t, x, y)` for ONE example, y either

- a class label: an integer scalar in {0, ..., num_classes - 1}; the extra index
  `null_label = num_classes` is the "no label" class of classifier-free guidance
  (an embedding table of num_classes + 1 rows). `y=None` means the null label, so
  `apply(params, t, x)` is the unconditional branch and every unconditional caller
  (ODE sampling, likelihoods, flow maps) works unchanged;
- a context vector of shape (context_dim,) (e.g. the observation of the LFM paper's
  robot-policy experiment). A context network has no null context: y is required.

`ConditionalNetwork` extends `networks.Network` with these facts (`num_classes`,
`context_dim`, `null_label`); `lfm_jax.guidance` reads them. `conditional_mlp(...)`
builds an MLP velocity (or two-time network) on [features(t), x, embedding(y)],
reusing `networks.MLP`: the label embedding (or the raw context vector) is
concatenated to the flattened example.

`ContextGaussianMixture` is the tested example of context conditioning: a Gaussian
mixture in R^D whose means move linearly with a continuous context c in R^{D_c},

    p(x | c) = sum_k w_k N(x; b_k + A_k c, sigma_k^2 I),

with exact `log_prob(x, c)` and `sample(key, c)`; contexts c ~ N(0, I). Its
conditional entropy H(X | C) = -E log p(X | C) is the floor of a conditional NLL.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lfm_jax import networks

__all__ = [
    "ConditionalNetwork",
    "check_condition",
    "check_kind",
    "ConditionalMLP",
    "conditional_mlp",
    "MLP_FIXED_SETTINGS",
    "check_mlp_settings",
    "ContextGaussianMixture",
    "make_context_mixture",
]


@dataclasses.dataclass(frozen=True)
class ConditionalNetwork(networks.Network):
    """A `networks.Network` whose apply takes a condition y after x.

    apply(params, *times, x, y=None, *, dropout_key=None) -> output of x's shape.
    Exactly one of `num_classes` (class labels, null label = num_classes, y=None means
    null) and `context_dim` (context vectors, y required) is set; both None is an
    unconditional network that takes y=None only.
    """

    num_classes: Optional[int] = None
    context_dim: Optional[int] = None

    @property
    def null_label(self) -> Optional[int]:
        """The null class index (num_classes) for class-conditional networks, else None."""
        return self.num_classes


def check_condition(y, num_classes: Optional[int], context_dim: Optional[int]):
    """Validate the condition of ONE example at trace time (shapes only) and return it.

    Returns the int32 label (None -> null label `num_classes`), the context vector, or
    None for an unconditional network. Label VALUES are not checkable under jit: a
    label outside {0..num_classes} is clipped by the embedding lookup.

    Raises:
        TypeError: a label or context passed to an unconditional network, or a
            missing context.
        ValueError: a label that is not a scalar, or a context of the wrong shape.
    """
    if num_classes is None and context_dim is None:
        if y is not None:
            raise TypeError("this network is unconditional; it takes no y")
        return None
    if num_classes is not None:
        if y is None:
            return jnp.asarray(num_classes, jnp.int32)
        y = jnp.asarray(y)
        if y.shape != ():
            raise ValueError(f"a class label is one integer per example, got shape {y.shape}; "
                             f"batch with jax.vmap")
        return y.astype(jnp.int32)
    if y is None:
        raise TypeError(f"this network is conditioned on a context vector of shape "
                        f"({context_dim},); y is required (there is no null context)")
    y = jnp.asarray(y)
    if y.shape != (context_dim,):
        raise ValueError(f"context must have shape ({context_dim},), got {y.shape}; "
                         f"batch with jax.vmap")
    return y


def check_kind(num_classes, context_dim):
    """Raise ValueError unless at most one of num_classes, context_dim is set (each >= 1)."""
    if num_classes is not None and context_dim is not None:
        raise ValueError("pass num_classes (labels) or context_dim (context vectors), not both")
    if num_classes is not None and int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if context_dim is not None and int(context_dim) < 1:
        raise ValueError(f"context_dim must be >= 1, got {context_dim}")


# --------------------------------------------------------------------------- MLP


class ConditionalMLP(nn.Module):
    """`networks.MLP` on [features(times), x, e(y)]: e a learned label embedding of
    `embed_dim` (num_classes + 1 rows, the last the null class) or the context itself."""

    out_dim: int
    hidden: Sequence[int]
    activation: str
    num_frequencies: int
    max_frequency: float
    zero_init_output: bool
    num_classes: Optional[int] = None
    embed_dim: int = 32

    @nn.compact
    def __call__(self, times, x, y):
        if self.num_classes is not None:
            y = nn.Embed(self.num_classes + 1, self.embed_dim)(y)
        h = x if y is None else jnp.concatenate([x, y.astype(x.dtype)])
        return networks.MLP(out_dim=self.out_dim, hidden=self.hidden,
                            activation=self.activation, num_frequencies=self.num_frequencies,
                            max_frequency=self.max_frequency,
                            zero_init_output=self.zero_init_output)(times, h)


MLP_FIXED_SETTINGS = {"time_embedding": "fourier", "softplus_beta": 1.0,
                      "weight_init": "lecun", "compute_dtype": "float32"}
"""Settings of `networks.velocity_mlp` / `two_time_mlp` that `conditional_mlp` does not
take, with the values its MLP always uses (`networks.MLP`'s defaults)."""


def check_mlp_settings(settings: dict, *, activation: str = "silu",
                       what: str = "the conditional MLP", prefix: str = "") -> None:
    """Refuse MLP settings that `conditional_mlp` would silently ignore.

    settings: keyword arguments meant for `networks.velocity_mlp` / `two_time_mlp`
    (time_embedding, softplus_beta, weight_init, compute_dtype, ...). An entry is
    unsupported when its name is not in `MLP_FIXED_SETTINGS` or its value differs from
    the one there; softplus_beta counts only with activation "softplus" (the only
    activation that reads it, as in `networks.MLP`). `what` names the model in the
    message and `prefix` is put before each setting's name (e.g. "config.model.").
    The one check of `flow_map.make_flow_map(num_classes=...)` and
    `runs.models.network`.

    Raises:
        ValueError: naming every unsupported setting and its value.
    """
    bad = {}
    for name, value in settings.items():
        if name not in MLP_FIXED_SETTINGS:
            bad[name] = value
        elif value != MLP_FIXED_SETTINGS[name] and not (
                name == "softplus_beta" and activation != "softplus"):
            bad[name] = value
    if bad:
        got = ", ".join(f"{prefix}{k}={v!r}" for k, v in sorted(bad.items()))
        fixed = ", ".join(f"{k}={v!r}" for k, v in MLP_FIXED_SETTINGS.items())
        raise ValueError(f"{what} does not support {got}: the class-conditional MLP "
                         f"(conditional.conditional_mlp) always uses {fixed}")


def conditional_mlp(example_shape, *, num_classes: Optional[int] = None,
                    context_dim: Optional[int] = None, num_times: int = 1,
                    hidden=(256, 256, 256, 256), activation: str = "silu",
                    embed_dim: int = 32, num_frequencies: int = 8,
                    max_frequency: float = 64.0,
                    zero_init_output: bool = False) -> ConditionalNetwork:
    """Conditional MLP velocity (num_times=1) or two-time network (num_times=2).

    apply(params, t, x, y=None) (or apply(params, s, t, x, y=None)) -> array of x's
    shape, for ONE example. y: an int label (None = null label) when `num_classes` is
    set, a (context_dim,) vector when `context_dim` is set. The MLP input is
    [fourier_features(t) (per time), x.reshape(-1), e(y)] with e a learned embedding
    of `embed_dim` for labels and e(c) = c for contexts. The MLP has no dropout;
    `dropout_key` is accepted (and ignored) for a uniform interface with the U-Net.
    """
    check_kind(num_classes, context_dim)
    if activation not in networks.ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; "
                         f"known: {sorted(networks.ACTIVATIONS)}")
    if num_times not in (1, 2):
        raise ValueError(f"num_times must be 1 (velocity) or 2 (flow map), got {num_times}")
    example_shape = tuple(int(d) for d in example_shape)
    dim = math.prod(example_shape)
    module = ConditionalMLP(out_dim=dim, hidden=tuple(int(w) for w in hidden),
                            activation=activation, num_frequencies=num_frequencies,
                            max_frequency=max_frequency, zero_init_output=zero_init_output,
                            num_classes=None if num_classes is None else int(num_classes),
                            embed_dim=int(embed_dim))

    def apply(params, *args, y=None, dropout_key=None):
        del dropout_key  # no dropout in the MLP
        if len(args) == num_times + 2 and y is None:
            *args, y = args
        if len(args) != num_times + 1:
            raise TypeError(f"expected {num_times} time argument(s), x and optionally y; "
                            f"got {len(args)} positional arguments")
        *times, x = args
        if x.shape != example_shape:
            raise ValueError(f"network expects one example of shape {example_shape}, got "
                             f"{x.shape}; batch with jax.vmap")
        cond = check_condition(y, num_classes, context_dim)
        out = module.apply(params, times, x.reshape(-1), cond)
        return out.reshape(example_shape).astype(x.dtype)

    def init(key):
        times = [jnp.zeros(())] * num_times
        if num_classes is not None:
            cond = jnp.zeros((), jnp.int32)
        elif context_dim is not None:
            cond = jnp.zeros((int(context_dim),))
        else:
            cond = None
        return module.init(key, times, jnp.zeros((dim,)), cond)

    return ConditionalNetwork(init=init, apply=apply, example_shape=example_shape,
                              num_params=networks.count_params, num_classes=num_classes,
                              context_dim=context_dim)


# ------------------------------------------------------------- conditional density


@dataclasses.dataclass(frozen=True)
class ContextGaussianMixture:
    """p(x | c) = sum_k w_k N(x; b_k + A_k c, sigma_k^2 I_D), contexts c ~ N(0, I_{D_c}).

    Attributes:
        offsets: (K, D) b_k.
        slopes: (K, D, D_c) A_k.
        stds: (K,) sigma_k.
        weights: (K,) w_k (normalised when used).
    """

    offsets: jax.Array
    slopes: jax.Array
    stds: jax.Array
    weights: jax.Array

    @property
    def dim(self) -> int:
        return int(self.offsets.shape[1])

    @property
    def context_dim(self) -> int:
        return int(self.slopes.shape[2])

    def astype(self, dtype) -> "ContextGaussianMixture":
        """The same mixture with every array cast to `dtype` (e.g. float64 for checks)."""
        return dataclasses.replace(self, **{f.name: jnp.asarray(getattr(self, f.name), dtype)
                                            for f in dataclasses.fields(self)})

    def means(self, c) -> jax.Array:
        """Component means b_k + A_k c for ONE context c (D_c,), shape (K, D)."""
        return self.offsets + jnp.einsum("kdc,c->kd", self.slopes, c)

    def log_weights(self) -> jax.Array:
        log_w = jnp.log(jnp.asarray(self.weights))
        return log_w - jax.scipy.special.logsumexp(log_w)

    def log_prob(self, x, c) -> jax.Array:
        """Exact log p(x | c) for ONE example x (D,) and context c (D_c,): a scalar.

        logsumexp_k [log w_k - |x - mu_k(c)|^2 / (2 sigma_k^2) - D log sigma_k
                     - D log(2 pi) / 2].
        """
        diff = x[None, :] - self.means(c)
        stds = jnp.asarray(self.stds)
        log_comp = (-0.5 * jnp.sum(diff * diff, axis=-1) / stds ** 2
                    - self.dim * jnp.log(stds) - 0.5 * self.dim * math.log(2.0 * math.pi))
        return jax.scipy.special.logsumexp(log_comp + self.log_weights())

    def sample(self, key, c) -> jax.Array:
        """One x ~ p(. | c) per context: c (n, D_c) -> x (n, D)."""
        c = jnp.asarray(c)
        if c.ndim != 2 or c.shape[1] != self.context_dim:
            raise ValueError(f"contexts must have shape (n, {self.context_dim}), got {c.shape}")
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_weights(), shape=(c.shape[0],))
        means = jax.vmap(self.means)(c)[jnp.arange(c.shape[0]), comp]
        z = jax.random.normal(kz, means.shape, means.dtype)
        return means + jnp.asarray(self.stds)[comp][:, None] * z

    def sample_contexts(self, key, n: int) -> jax.Array:
        """n contexts c ~ N(0, I), shape (n, D_c)."""
        return jax.random.normal(key, (int(n), self.context_dim), self.offsets.dtype)

    def sample_joint(self, key, n: int):
        """n pairs: (x (n, D), c (n, D_c)) with c ~ N(0, I), x ~ p(. | c)."""
        kc, kx = jax.random.split(key)
        c = self.sample_contexts(kc, n)
        return self.sample(kx, c), c

    def conditional_entropy_mc(self, key, n: int = 100_000):
        """Monte-Carlo H(X | C) = -E log p(X | C) (the conditional-NLL floor), with its
        standard error: (H_hat, stderr) as jax scalars."""
        x, c = self.sample_joint(key, n)
        log_p = jax.lax.map(lambda xc: self.log_prob(*xc), (x, c), batch_size=4096)
        return -jnp.mean(log_p), jnp.std(log_p, ddof=1) / math.sqrt(n)


def make_context_mixture(seed: int, dim: int, context_dim: int, n_components: int = 4, *,
                         offset_scale: float = 2.0, slope_scale: float = 1.0,
                         std_range=(0.3, 0.6)) -> ContextGaussianMixture:
    """A reproducible random `ContextGaussianMixture`.

    b_k ~ N(0, offset_scale^2 I), A_k entries ~ N(0, slope_scale^2 / D_c) (so A_k c has
    entries of variance slope_scale^2 for c ~ N(0, I)), sigma_k ~ U[std_range],
    w_k ∝ U[0.5, 1.5]. Same seed and arguments, same mixture (float32).
    """
    if min(dim, context_dim, n_components) < 1:
        raise ValueError(f"dim, context_dim and n_components must be >= 1, got "
                         f"{dim}, {context_dim}, {n_components}")
    kb, ka, ks, kw = jax.random.split(jax.random.PRNGKey(int(seed)), 4)
    offsets = offset_scale * jax.random.normal(kb, (n_components, dim))
    slopes = slope_scale / math.sqrt(context_dim) * jax.random.normal(
        ka, (n_components, dim, context_dim))
    stds = jax.random.uniform(ks, (n_components,), minval=std_range[0], maxval=std_range[1])
    weights = jax.random.uniform(kw, (n_components,), minval=0.5, maxval=1.5)
    return ContextGaussianMixture(offsets=offsets, slopes=slopes, stds=stds,
                                  weights=weights / jnp.sum(weights))
