"""Two-time flow maps X_{s,t} (docs/maths.md section 4): parametrisation, sampling,
(s, t) samplers and a learned per-(s, t) loss weighting.

Parametrisation. From a raw two-time network v(params, s, t, x) (one example, output of
x's shape),

    X_{s,t}(x) = x + (t - s) v_{s,t}(x),

so X_{s,s} = id holds exactly (not only approximately) and the tangent condition
d/dt X_{s,t}(x) |_{t=s} = v_{s,s}(x) makes v_{t,t} the velocity b_t of the flow.

Sampling on a grid t_0 < ... < t_K: x_{k+1} = X_{t_k, t_{k+1}}(x_k); K = 1 is one-step
generation, cost K network calls. Maps trained on an interpolant between x0 (noise, at
t = 0) and x1 (data, at t = 1) generate forward, from noise at t = 0.

(s, t) samplers are chosen by name from `TIME_PAIR_SAMPLERS` outside jit; each returns
`sample(key, n, step=0) -> (s, t)`, two arrays of shape (n,).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lfm_jax import networks


# ---------------------------------------------------------------------------
# Learned per-(s, t) loss weighting.
# ---------------------------------------------------------------------------

class _LogVarianceMLP(nn.Module):
    """lv(s, t): Fourier features of s and t -> small MLP -> scalar (zero-initialised)."""

    hidden: Sequence[int] = (64,)
    num_frequencies: int = 4
    max_frequency: float = 16.0

    @nn.compact
    def __call__(self, s, t):
        h = jnp.concatenate([
            networks.fourier_features(s, self.num_frequencies, self.max_frequency),
            networks.fourier_features(t, self.num_frequencies, self.max_frequency)])
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[0]


@dataclasses.dataclass(frozen=True)
class LossWeighting:
    """Learned log-variance lv(s, t) (uncertainty weighting of the self-distillation code).

    A loss term L at times (s, t) becomes exp(-lv(s, t)) L + lv(s, t). Minimising over
    lv gives lv* = log L, so each (s, t) is normalised by its own scale and the
    gradients on the flow map are balanced across time pairs. The output layer is
    zero-initialised, so training starts at lv = 0 (unweighted).

    init: key -> params; apply: (params, s, t) -> scalar lv (s, t scalars).
    """

    init: Callable
    apply: Callable


def loss_weighting(hidden=(64,), num_frequencies: int = 4,
                   max_frequency: float = 16.0) -> LossWeighting:
    """A `LossWeighting` backed by a small MLP of Fourier features of (s, t)."""
    module = _LogVarianceMLP(hidden=tuple(hidden), num_frequencies=num_frequencies,
                             max_frequency=max_frequency)
    return LossWeighting(
        init=lambda key: module.init(key, jnp.zeros(()), jnp.zeros(())),
        apply=lambda params, s, t: module.apply(params, s, t))


def weighted(loss, log_variance):
    """exp(-lv) * loss + lv (scalars); exactly `loss` when lv = 0."""
    return jnp.exp(-log_variance) * loss + log_variance


def tangent_velocity(X: Callable) -> Callable:
    """b(t, x) = d/dt' X_{t,t'}(x) at t' = t, for ANY map closure X(s, t, x) (one jvp).

    For the parametrisation X = x + (t - s) v this equals v_{t,t}(x)
    (`FlowMap.diagonal_velocity`, one plain network call).
    """
    def b(t, x):
        return jax.jvp(lambda tt: X(t, tt, x), (t,), (jnp.ones_like(t),))[1]
    return b


@dataclasses.dataclass(frozen=True)
class Closures:
    """What a flow-map objective reads, for ONE example (parameters bound).

    X: the student map X(s, t, x).
    velocity: the student's velocity b(t, x) = v_{t,t}(x); None: `tangent_velocity(X)`.
    log_variance: learned lv(s, t); None: 0 (unweighted).
    teacher: teacher velocity b(t, x) (teacher objectives).
    teacher_map: frozen teacher map X(s, t, x) (progressive distillation).
    """

    X: Callable
    velocity: Optional[Callable] = None
    log_variance: Optional[Callable] = None
    teacher: Optional[Callable] = None
    teacher_map: Optional[Callable] = None

    def __post_init__(self):
        if self.velocity is None:
            object.__setattr__(self, "velocity", tangent_velocity(self.X))
        if self.log_variance is None:
            object.__setattr__(self, "log_variance", lambda s, t: jnp.zeros_like(s))


# ---------------------------------------------------------------------------
# The flow map.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FlowMap:
    """X_{s,t}(x) = x + (t - s) v_{s,t}(x) from a two-time `networks.Network`.

    Parameters are a dict {"net": network params} plus {"weight": ...} when a
    `LossWeighting` is attached (a structural choice fixed at construction, not a flag
    read inside traced code).

    Methods (one example; x of shape `example_shape`, s and t scalars):
      init(key) -> params
      apply(params, s, t, x, y=None) -> X_{s,t}(x), same shape as x
      diagonal_velocity(params, t, x, y=None) -> v_{t,t}(x) = b_t(x), one network call
      bind(params, label=None) -> closure X(s, t, x)
      closures(params, teacher=None, teacher_map=None, label=None) -> `Closures` for
        the losses (X, v_{t,t}, and lv(s, t) when a weighting is attached, else 0)

    Class-conditional maps: with a class-conditional network
    (`conditional.ConditionalNetwork`, num_classes set) y is ONE example's int label
    (scalar, may be traced), the null label `network.null_label` the unconditional
    branch; y=None passes no label (the network's null class for a class-conditional
    network, and the only choice for an unconditional one, whose calls stay exactly as
    they were). `bind(params, label)` / `closures(..., label=y)` bind the label, so the
    per-example losses and `sample` see plain X(s, t, x) closures.
    """

    network: networks.Network
    weighting: Optional[LossWeighting] = None

    @property
    def example_shape(self) -> tuple:
        return self.network.example_shape

    def init(self, key):
        k_net, k_w = jax.random.split(key)
        params = {"net": self.network.init(k_net)}
        if self.weighting is not None:
            params["weight"] = self.weighting.init(k_w)
        return params

    @property
    def num_classes(self) -> Optional[int]:
        """The network's number of classes (None: not class-conditional)."""
        return getattr(self.network, "num_classes", None)

    @property
    def null_label(self) -> Optional[int]:
        """The network's null label (None: not class-conditional)."""
        return getattr(self.network, "null_label", None)

    def _net(self, params, *args, y=None):
        if y is None:  # exactly the unconditional call
            return self.network.apply(params["net"], *args)
        if self.num_classes is None:
            raise TypeError("this flow map's network is not class-conditional; it takes "
                            "no label (build it with num_classes set)")
        return self.network.apply(params["net"], *args, y)

    def apply(self, params, s, t, x, y=None):
        """X_{s,t}(x) = x + (t - s) v_{s,t}(x[, y]); exactly x when s == t."""
        v = self._net(params, s, t, x, y=y)
        return x + (t - s) * v

    def diagonal_velocity(self, params, t, x, y=None):
        """v_{t,t}(x[, y]), the velocity b_t(x) of the flow the map represents."""
        return self._net(params, t, t, x, y=y)

    def bind(self, params, label=None) -> Callable:
        """X(s, t, x) with params (and, when given, the label of ONE example) bound."""
        if label is None:
            return functools.partial(self.apply, params)
        return lambda s, t, x: self.apply(params, s, t, x, label)

    def closures(self, params, teacher=None, teacher_map=None, label=None) -> Closures:
        """The student's X, v_{t,t} and lv with `params` (and `label`, one example's
        class label, when given) bound, plus the teacher closures as given (a
        labelled loss binds the teacher's label itself: `distill.make_loss`)."""
        if label is None:
            velocity = functools.partial(self.diagonal_velocity, params)
        else:
            velocity = lambda t, x: self.diagonal_velocity(params, t, x, label)  # noqa: E731
        return Closures(X=self.bind(params, label),
                        velocity=velocity,
                        log_variance=(None if self.weighting is None else
                                      functools.partial(self.weighting.apply, params["weight"])),
                        teacher=teacher, teacher_map=teacher_map)


def make_flow_map(example_shape, hidden=(256, 256, 256, 256), activation="silu",
                  num_frequencies=8, max_frequency=64.0, zero_init_output=False,
                  learned_weighting: bool = False, weighting_hidden=(64,),
                  num_classes: Optional[int] = None, **network_kwargs) -> FlowMap:
    """`FlowMap` over a `networks.two_time_mlp`, optionally with a learned lv(s, t).
    network_kwargs (time_embedding, softplus_beta, weight_init, ...) go to the MLP.

    num_classes > 0: a class-conditional map X(s, t, x, y) over
    `conditional.conditional_mlp` (num_times=2, null label num_classes); that MLP has
    Fourier time features, lecun init and float32 compute only, so network_kwargs
    other than those values are a ValueError (`conditional.check_mlp_settings`)."""
    if num_classes:
        from lfm_jax import conditional

        conditional.check_mlp_settings(network_kwargs, activation=activation,
                                       what="the class-conditional flow-map MLP")
        net = conditional.conditional_mlp(
            tuple(example_shape), num_classes=int(num_classes), num_times=2,
            hidden=tuple(hidden), activation=activation, num_frequencies=num_frequencies,
            max_frequency=max_frequency, zero_init_output=zero_init_output)
    else:
        net = networks.two_time_mlp(example_shape, hidden, activation, num_frequencies,
                                    max_frequency, zero_init_output, **network_kwargs)
    weighting = loss_weighting(weighting_hidden) if learned_weighting else None
    return FlowMap(network=net, weighting=weighting)


def sample(X: Callable, z, times, *, batched: bool = True):
    """Few-step flow-map sampling: x_0 = z, x_{k+1} = X_{t_k, t_{k+1}}(x_k), k < K.

    Args:
      X: flow map closure X(s, t, x) of ONE example (parameters bound).
      z: start states at times[0], (n, ...) if `batched` else one example (...). For a
        map trained on an interpolant from x0 (noise, t = 0) to x1 (data, t = 1) and
        times from 0 to 1, z is the noise and the result are samples; an LFM block's
        distilled inverse (`distill.distill_lfm_blocks`) also has its noise side at 0.
      times: 1-D array of K + 1 times (e.g. `uniform_grid(K)`); K = 1 is one-step
        generation. Decreasing times run the map backward.
    Returns:
      x_K at times[-1], same shape as z.
    Cost: K network calls per example (lax.scan over the K steps).
    """
    times = jnp.asarray(times)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"times must be 1-D with at least 2 points, got {times.shape}")
    step = jax.vmap(X, in_axes=(None, None, 0)) if batched else X

    def body(xk, st):
        return step(st[0], st[1], xk), None

    pairs = jnp.stack([times[:-1], times[1:]], axis=1).astype(jnp.result_type(z.dtype, float))
    return jax.lax.scan(body, z, pairs)[0]


def uniform_grid(num_steps: int, t0: float = 0.0, t1: float = 1.0):
    """K + 1 evenly spaced times from t0 to t1, shape (num_steps + 1,)."""
    return jnp.linspace(t0, t1, int(num_steps) + 1)


# ---------------------------------------------------------------------------
# (s, t) samplers: sample(key, n, step=0) -> (s (n,), t (n,)).
# ---------------------------------------------------------------------------

def _put_on_diagonal(key, s, t, fraction: float):
    """Set s = t = u, u ~ U[0, 1] drawn afresh, on the first round(fraction * n) entries
    (a fixed count per batch, and a uniform diagonal time, as the official
    self-distillation code does); the rest keep their (s, t)."""
    n = s.shape[0]
    m = int(round(float(fraction) * n))
    if m == 0:
        return s, t
    on_diag = jnp.arange(n) < m
    u = jax.random.uniform(key, (n,), s.dtype)
    return jnp.where(on_diag, u, s), jnp.where(on_diag, u, t)


def uniform_square(key, n, step=0, diagonal_fraction: float = 0.0):
    """(s, t) ~ U[0, 1]^2 (both directions, s > t gives backward maps)."""
    ks, kt, kd = jax.random.split(key, 3)
    s = jax.random.uniform(ks, (n,))
    t = jax.random.uniform(kt, (n,))
    return _put_on_diagonal(kd, s, t, diagonal_fraction)


def upper_triangle(key, n, step=0, diagonal_fraction: float = 0.0):
    """(s, t) uniform on {0 <= s <= t <= 1}: the sorted pair of two uniforms."""
    ku, kd = jax.random.split(key)
    u = jax.random.uniform(ku, (2, n))
    s, t = jnp.min(u, axis=0), jnp.max(u, axis=0)
    return _put_on_diagonal(kd, s, t, diagonal_fraction)


def diagonal(key, n, step=0, diagonal_fraction: float = 0.75):
    """Upper triangle with `diagonal_fraction` of the batch (0.75 by default) on s = t,
    t ~ U[0, 1] there: the self-distillation sampler (diagonal term on s = t,
    distillation off it)."""
    return upper_triangle(key, n, step, diagonal_fraction)


def annealed(key, n, step=0, initial_gap: float = 0.05, anneal_steps: int = 10_000,
             diagonal_fraction: float = 0.0):
    """Window |t - s| <= g(step), g growing linearly from `initial_gap` to 1 over
    `anneal_steps` steps: gap ~ U[0, g], s ~ U[0, 1 - gap], t = s + gap.

    `step` may be a traced integer (the schedule is arithmetic, no branching).
    """
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(anneal_steps), 1), 0.0, 1.0)
    max_gap = initial_gap + (1.0 - initial_gap) * frac
    kg, ks, kd = jax.random.split(key, 3)
    gap = max_gap * jax.random.uniform(kg, (n,))
    s = (1.0 - gap) * jax.random.uniform(ks, (n,))
    return _put_on_diagonal(kd, s, s + gap, diagonal_fraction)


TIME_PAIR_SAMPLERS = {
    "uniform": uniform_square,
    "triangle": upper_triangle,
    "diagonal": diagonal,
    "annealed": annealed,
}


def get_time_pair_sampler(name: str, **kwargs) -> Callable:
    """`sample(key, n, step=0) -> (s, t)` by name, keyword options bound."""
    if name not in TIME_PAIR_SAMPLERS:
        raise ValueError(f"unknown (s, t) sampler {name!r}; known: "
                         f"{sorted(TIME_PAIR_SAMPLERS)}")
    return functools.partial(TIME_PAIR_SAMPLERS[name], **kwargs)
