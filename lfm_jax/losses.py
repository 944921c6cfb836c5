"""Per-example losses (docs/maths.md sections 2 and 4). Each is a pure function of
closures and arrays for ONE example; batch with `jax.vmap` and average.

Closures: `b(t, x)` a velocity field, `X(s, t, x)` a flow map, parameters bound.
Time derivatives are `jax.jvp` in the scalar time argument.

Flow-map objectives share ONE signature,

    loss(c, interp, s, u, t, x0, x1, **options) -> scalar

with `c` a `flow_map.Closures` (student map X, its velocity v_{t,t}, its learned
log-variance lv, and the teacher's velocity and map when the objective has a teacher),
`interp` an `Interpolant`, s, u, t scalar times (u in [s, t] is read by PSD only),
x0 (noise) and x1 (data) one example each. `OBJECTIVES` maps a name to an `Objective`
record: the loss, its default (s, t) sampler (a key of `flow_map.TIME_PAIR_SAMPLERS`),
whether it needs a teacher velocity, and its keyword options with their defaults.
Adding an objective is one function and one entry:

    def my_objective(c, interp, s, u, t, x0, x1):
        x_s, _ = interpolants_lib.interpolate(interp, s, x0, x1)
        return flow_map.weighted(_sqnorm(c.X(s, t, x_s) - ...), c.log_variance(s, t))

    OBJECTIVES["mine"] = Objective(my_objective, time_sampler="triangle")
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from lfm_jax import flow_map
from lfm_jax import interpolants as interpolants_lib


def _sqnorm(x):
    return jnp.sum(jnp.square(x))


def flow_matching(b, interp, t, x0, x1, z=None):
    """| b(t, I_t) - dI_t |^2 for one example.

    Args:
      b: velocity closure b(t, x).
      interp: an `Interpolant`.
      t: scalar time.
      x0, x1: endpoints of one example (same shape); z: optional noise.
    Returns:
      scalar squared error (summed over the example's coordinates).
    The minimiser over b is b_t(x) = E[dI_t | I_t = x].
    """
    x_t, dx_t = interpolants_lib.interpolate(interp, t, x0, x1, z)
    return _sqnorm(b(t, x_t) - dx_t)


# ---------------------------------------------------------------------------
# Flow-map objectives (docs/maths.md section 4). d/dt and d/ds are jax.jvp in the
# scalar time; grad_x X_{s,t}(x) b is jax.jvp in x with tangent b. All return a scalar
# (squared norms summed over the example's coordinates), weighted by the learned
# log-variance as exp(-lv) L + lv (`flow_map.weighted`; lv = 0 without a weighting).
# ---------------------------------------------------------------------------

def _d_dt(f, t):
    """(f(t), df/dt(t)) for a scalar time t, by forward mode."""
    return jax.jvp(f, (t,), (jnp.ones_like(t),))


def _safe_gap(s, t):
    """t - s, replaced by 1 where s == t (those residuals are exactly zero anyway)."""
    gap = t - s
    return jnp.where(gap == 0, jnp.ones_like(gap), gap)


def _start_point(interp, s, x0, x1):
    return interpolants_lib.interpolate(interp, s, x0, x1)[0]


def lagrangian_distillation(c, interp, s, u, t, x0, x1):
    """Lagrangian map distillation (LMD): | d/dt X_{s,t}(x) - b_t(X_{s,t}(x)) |^2 at
    x = I_s, b the teacher velocity `c.teacher`.

    One jvp in t gives X_{s,t}(x) and its t-derivative. The gradient flows through both
    terms, including X_{s,t}(x) inside the (frozen) teacher b, as in the flow-map-matching
    paper. Zero for the exact flow map of b.
    """
    x = _start_point(interp, s, x0, x1)
    x_t, dt_x = _d_dt(lambda tt: c.X(s, tt, x), t)
    return flow_map.weighted(_sqnorm(dt_x - c.teacher(t, x_t)), c.log_variance(s, t))


def eulerian_distillation(c, interp, s, u, t, x0, x1):
    """Eulerian map distillation (EMD): | d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b_s(x) |^2
    at x = I_s, b the teacher velocity `c.teacher`.

    Both terms come from ONE jvp of (s', y) -> X_{s',t}(y) with tangent (1, b_s(x)).
    Zero for the exact flow map of b (the map is constant along trajectories).
    """
    x = _start_point(interp, s, x0, x1)
    _, residual = jax.jvp(lambda ss, y: c.X(ss, t, y), (s, x),
                          (jnp.ones_like(s), c.teacher(s, x)))
    return flow_map.weighted(_sqnorm(residual), c.log_variance(s, t))


def flow_map_matching(c, interp, s, u, t, x0, x1):
    """Direct flow map matching over an interpolant (no teacher), with y = X_{t,s}(I_t):

        | (d/dt X_{s,t})(y) - dI_t |^2 + | X_{s,t}(y) - I_t |^2.

    The derivative is the partial in the map's second time with y held fixed. The
    second term enforces invertibility X_{s,t} o X_{t,s} = id. Use (s, t) over the
    whole square so both directions are learned.
    """
    x_t, dx_t = interpolants_lib.interpolate(interp, t, x0, x1)
    y = c.X(t, s, x_t)
    x_back, dt_x = _d_dt(lambda tt: c.X(s, tt, y), t)
    return flow_map.weighted(_sqnorm(dt_x - dx_t) + _sqnorm(x_back - x_t), c.log_variance(s, t))


def progressive_distillation(c, interp, s, u, t, x0, x1, *, num_teacher_steps: int = 2):
    """Progressive flow map matching (PFMM) with k = num_teacher_steps jumps of the
    frozen teacher map Xc = `c.teacher_map` on t_j = s + j (t - s) / k, at x = I_s:

        | X_{s,t}(x) - sg[ Xc_{t_{k-1},t} o ... o Xc_{s,t_1}(x) ] |^2 / (t - s)^2.

    Choices: the division by (t - s)^2 is ours (it compares average velocities and
    makes the residual exactly 0 at s = t; the minimiser is unchanged); the official
    code does not divide. This is ONE round against a fixed teacher (a frozen map, or
    an ODE solve of a velocity, `distill.ode_flow_map`); the official progressive
    schedule instead refreshes the teacher with the student after each round and
    doubles the gap. k is a Python int (static). The teacher gets no gradient.
    """
    x = _start_point(interp, s, x0, x1)
    k = int(num_teacher_steps)
    target = jax.lax.stop_gradient(
        flow_map.sample(c.teacher_map, x, flow_map.uniform_grid(k, s, t), batched=False))
    return flow_map.weighted(_sqnorm((c.X(s, t, x) - target) / _safe_gap(s, t)),
                             c.log_variance(s, t))


def _self_distillation(off_diagonal, c, interp, s, t, x0, x1):
    """L_b(t) + [s != t] L_D(s, t), each weighted by exp(-lv) L + lv."""
    x_t, dx_t = interpolants_lib.interpolate(interp, t, x0, x1)
    diag = flow_map.weighted(_sqnorm(c.velocity(t, x_t) - dx_t), c.log_variance(t, t))
    off = flow_map.weighted(off_diagonal(_start_point(interp, s, x0, x1)), c.log_variance(s, t))
    return diag + jnp.where(s != t, off, jnp.zeros_like(off))


_SELF_DOC = """
    Self-distillation (Boffi, Albergo, Vanden-Eijnden 2025), per example:

        L = | v_{t,t}(I_t) - dI_t |^2  +  [s != t] L_D(s, t)

    The diagonal flow-matching term (tangent condition) trains v_{t,t} = b_t at time
    t; the off-diagonal term uses the model's own v_{t,t} (`c.velocity`) as teacher,
    under stop-gradient, on x = I_s (same x0, x1). At s = t the off-diagonal residual
    is identically zero, so with a diagonal-fraction (s, t) sampler the batch splits as
    in the official code (diagonal examples train the tangent, the others distil),
    except that here every example also contributes the diagonal term at its t. With a
    learned log-variance each term L becomes exp(-lv) L + lv (diagonal at (t, t),
    off-diagonal at (s, t), masked at s = t).
    """


def lagrangian_self_distillation(c, interp, s, u, t, x0, x1):
    """LSD: L_D = | d/dt X_{s,t}(I_s) - sg[ v_{t,t}(sg[X_{s,t}(I_s)]) ] |^2.

    Gradient flows only through d/dt X_{s,t}(I_s) (the student); the teacher velocity
    and the transported point inside it are stop-gradient (the official "convex"
    variant).
    """
    def off_diagonal(x_s):
        x_st, dt_x = _d_dt(lambda tt: c.X(s, tt, x_s), t)
        teacher = jax.lax.stop_gradient(c.velocity(t, jax.lax.stop_gradient(x_st)))
        return _sqnorm(dt_x - teacher)
    return _self_distillation(off_diagonal, c, interp, s, t, x0, x1)


ESD_STOPGRADS = ("full", "average_velocity")


def eulerian_self_distillation(c, interp, s, u, t, x0, x1, *,
                               stopgrad: str = "average_velocity"):
    """ESD: L_D = | d/ds X_{s,t}(I_s) + sg[ grad_x X_{s,t}(I_s) v_{s,s}(I_s) ] |^2.

    The advective term (spatial jvp of the map along the model's own velocity) is
    always stop-gradient, as in the official code (no back-propagation through the
    spatial Jacobian). `stopgrad` picks where the gradient of the residual
    R = d/ds X_{s,t}(I_s) + grad_x X_{s,t}(I_s) v_{s,s}(I_s) enters; the loss VALUE
    (|R|^2) and the minimiser are the same for both:

    - "full" (the official variant, objective "esd"): through d/ds X_{s,t}(I_s).
      Linearised, training is d(X)/d(tau) = d/ds(d/ds X + b.grad X) with b.grad X
      frozen, which is anti-diffusive: a spatial mode of wavenumber k grows at rate
      ~ (k |b|)^2 / 4.
    - "average_velocity" (a MeanFlow-style variant, objective "esd_meanflow"): through
      the map's average velocity v_{s,t}(I_s) = (X_{s,t}(I_s) - I_s)/(t - s) only,
      regressed onto sg[v_{s,t} + R] (R = 0 reads v_{s,t} = v_{s,s} + (t - s)(d/ds +
      v_{s,s}.grad) v_{s,t}, the MeanFlow / continuous-time consistency form).
      Linearised, training then moves X like a transport equation that carries the
      exact X_{t,t} = id from the diagonal into s < t: no growing modes.
    """
    if stopgrad not in ESD_STOPGRADS:
        raise ValueError(f"unknown ESD stopgrad {stopgrad!r}; known: {ESD_STOPGRADS}")

    def off_diagonal(x_s):
        x_st, ds_x = _d_dt(lambda ss: c.X(ss, t, x_s), s)
        _, advect = jax.jvp(lambda y: c.X(s, t, y), (x_s,), (c.velocity(s, x_s),))
        if stopgrad == "full":
            return _sqnorm(ds_x + jax.lax.stop_gradient(advect))
        residual = jax.lax.stop_gradient(ds_x + advect)
        v_st = (x_st - x_s) / _safe_gap(s, t)
        return _sqnorm(v_st - jax.lax.stop_gradient(v_st + residual))
    return _self_distillation(off_diagonal, c, interp, s, t, x0, x1)


def progressive_self_distillation(c, interp, s, u, t, x0, x1):
    """PSD: L_D = | X_{s,t}(I_s) - sg[ X_{u,t}(X_{s,u}(I_s)) ] |^2 / (t - s)^2, s < u < t.

    The two-jump teacher is stop-gradient. Division by (t - s)^2 compares average
    velocities v_{s,t} with the teacher's (u-s)/(t-s) v_{s,u} + (t-u)/(t-s) v_{u,t}
    (the official "uniform" PSD), putting L_D on the same scale as the diagonal term.
    """
    def off_diagonal(x_s):
        teacher = jax.lax.stop_gradient(c.X(u, t, c.X(s, u, x_s)))
        return _sqnorm((c.X(s, t, x_s) - teacher) / _safe_gap(s, t))
    return _self_distillation(off_diagonal, c, interp, s, t, x0, x1)


for _fn in (lagrangian_self_distillation, eulerian_self_distillation,
            progressive_self_distillation):
    _fn.__doc__ += _SELF_DOC
del _fn


# ---------------------------------------------------------------------------
# The table of objectives.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Objective:
    """A flow-map objective.

    loss: per-example loss with the shared signature (module docstring).
    time_sampler: its default (s, t) sampler, a key of `flow_map.TIME_PAIR_SAMPLERS`.
    needs_teacher: whether it reads a teacher velocity `c.teacher` (and map
      `c.teacher_map`).
    options: its keyword options and their defaults (passed to `loss` as keywords;
      `distill.make_loss(..., **options)` overrides them).
    """

    loss: Callable
    time_sampler: str
    needs_teacher: bool = False
    options: Mapping = dataclasses.field(default_factory=dict)


OBJECTIVES = {
    "lmd": Objective(lagrangian_distillation, "triangle", needs_teacher=True),
    "emd": Objective(eulerian_distillation, "triangle", needs_teacher=True),
    "pfmm": Objective(progressive_distillation, "triangle", needs_teacher=True,
                      options={"num_teacher_steps": 2}),
    "fmm": Objective(flow_map_matching, "uniform"),
    "lsd": Objective(lagrangian_self_distillation, "diagonal"),
    "esd": Objective(eulerian_self_distillation, "diagonal", options={"stopgrad": "full"}),
    "esd_meanflow": Objective(eulerian_self_distillation, "diagonal",
                              options={"stopgrad": "average_velocity"}),
    "psd": Objective(progressive_self_distillation, "diagonal"),
}


def get_objective(name: str) -> Objective:
    """The `Objective` record of `name` (a key of `OBJECTIVES`)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown flow-map objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
