"""ODE integration, divergence and change-of-variables log-density (diffrax).

A velocity field is a closure ``b(t, x) -> dx/dt`` of ONE example: ``t`` a scalar,
``x`` an array of the example's shape (``(D,)`` or e.g. ``(H, W, C)``); parameters are
bound inside the closure. Batches are handled here with ``jax.vmap``, so every example
is solved on its own (adaptive solvers pick each example's step sizes separately).

Public names:

- ``Options``: the solver choice (solver, rtol, atol, num_steps, max_steps,
  on_failure) as one frozen value; ``options_from_config`` builds it from a config
  section.
- ``integrate(b, x, t0, t1, *, options, ...)``: solve dx/dt = b(t, x) from t0 to t1
  (t1 < t0 runs backward in time); ``chunk_size`` bounds memory by one chunk.
- ``divergence(b, t, x, ...)``: div_x b(t, x) = tr(d b / d x), exact or Hutchinson.
- ``log_prob(b, x, base_log_prob, *, options, ...)``: log-density (nats) by the
  instantaneous change of variables, integrating the augmented ODE (x, delta).
- ``standard_normal_log_prob(x)``: log N(x; 0, I) of one example.

Failed solves: by default (``Options.on_failure="raise"``) a solve that does not
succeed (e.g. diffrax's step budget ``max_steps`` is exhausted in a stiff region, or
the velocity is non-finite) raises at run time and the whole batch is lost. With
``on_failure="nan"`` each example is solved with diffrax's ``throw=False`` and the
examples whose solve failed (``sol.result != diffrax.RESULTS.successful``), or whose
start state is not finite, come back as NaN while the others keep their values:
evaluation code can then drop or count them (``jnp.isnan``).

A "raise" failure is reported by a host callback (``equinox.error_if``); JAX keeps
that callback's failed runtime token after the error has reached the caller and, at
interpreter exit, raises it again from its own exit hook (``jax._src.api.clean_up``,
which equinox's fix for diffrax issue 506 does not cover), printing "Exception
ignored in atexit callback". ``_drop_reported_callback_errors`` (registered at
import, so it runs before JAX's hook) waits on those tokens and drops them.

Solvers and divergence estimators are chosen by name from the registries ``SOLVERS``,
``DIVERGENCES`` and ``PROBES`` in Python, outside any traced code. Every function works
inside ``jax.jit`` / ``vmap`` / ``grad`` (``Options``, ``chunk_size`` and ``n_probes``
are Python values, i.e. static).

Compilation: ``integrate`` and ``log_prob`` compile their whole body with
``equinox.filter_jit``: arrays (x, times, tolerances, keys, and arrays inside a pytree
velocity) are traced; callables are static, keyed by identity. A fresh closure
``lambda t, x: velocity(params, t, x)`` therefore recompiles on every call (and bakes
``params`` in as constants); pass ``jax.tree_util.Partial(velocity, params)`` instead,
or call from inside your own ``jax.jit``, to reuse one compiled solve across parameter
values.
"""
import atexit
import dataclasses
import math
from typing import Callable, Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from lfm_jax import distributed


def _drop_reported_callback_errors() -> None:
    """At exit, wait on JAX's pending runtime tokens and drop them, ignoring the
    errors of failed host callbacks (a failed "raise" solve: its error was already
    raised to the caller when its result was read). Runs before JAX's own exit hook,
    which would otherwise raise the same error again as an ignored-exception
    traceback."""
    try:
        from jax._src import dispatch
        tokens = dispatch.runtime_tokens
        pending = [*tokens.current_tokens.values(), *tokens.output_runtime_tokens.values()]
    except Exception:  # noqa: BLE001 - private JAX API moved: nothing to drop
        return
    for token in pending:
        try:
            token.block_until_ready()
        except Exception:  # noqa: BLE001 - already reported when the result was read
            pass
    tokens.clear()


atexit.register(_drop_reported_callback_errors)

Velocity = Callable[[jax.Array, jax.Array], jax.Array]

# name -> (solver class, adaptive?). Adaptive solvers use PIDController(rtol, atol)
# unless num_steps is given; fixed-step ones always need num_steps.
SOLVERS = {
    "tsit5": (diffrax.Tsit5, True),
    "dopri5": (diffrax.Dopri5, True),
    "dopri8": (diffrax.Dopri8, True),
    "euler": (diffrax.Euler, False),
    "heun": (diffrax.Heun, False),
    "midpoint": (diffrax.Midpoint, False),
}


def _lookup(registry, name, what):
    """Return ``registry[name]`` or raise ValueError listing the known names."""
    if name not in registry:
        raise ValueError(
            f"unknown {what} {name!r}; expected one of {sorted(registry)}"
        )
    return registry[name]


def _vector_field(t, y, f):
    """diffrax vector field; the velocity f(t, y) travels as diffrax's ``args``."""
    return f(t, y)


_TERM = diffrax.ODETerm(_vector_field)


ON_FAILURE = ("raise", "nan")


@dataclasses.dataclass(frozen=True)
class Options:
    """How to solve an ODE: one frozen (hashable, static) value.

    Attributes:
        solver: a key of ``SOLVERS``. "tsit5", "dopri5", "dopri8" are adaptive with
            ``PIDController(rtol, atol)``; "euler", "heun", "midpoint" are fixed-step
            and need ``num_steps``. ``num_steps`` with an adaptive solver also makes it
            take ``num_steps`` constant steps dt0 = (t1 - t0) / num_steps.
        rtol, atol: tolerances of the adaptive step-size controller (they cover the
            log-det state of ``log_prob`` as well as x).
        num_steps: number of constant steps, or None for adaptive steps.
        max_steps: diffrax's step budget (at least num_steps is used). Exceeding it
            raises at run time (an ``EquinoxRuntimeError`` saying the maximum number
            of steps was reached) unless on_failure="nan".
        on_failure: "raise": a failed solve of any example raises at run time. "nan":
            solve with ``throw=False`` and return NaN (the whole example, every saved
            time) for the examples whose solve did not succeed or whose start is not
            finite; the others are unaffected.

    Invalid values raise ValueError here, before any work. Variants:
    ``dataclasses.replace(options, on_failure="nan")``.
    """

    solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    num_steps: Optional[int] = None
    max_steps: int = 4096
    on_failure: str = "raise"

    def __post_init__(self):
        _, adaptive = _lookup(SOLVERS, self.solver, "solver")
        if self.num_steps is None and not adaptive:
            raise ValueError(f"solver {self.solver!r} is fixed-step: pass num_steps")
        if self.num_steps is not None and int(self.num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"unknown on_failure {self.on_failure!r}; expected one of "
                             f"{list(ON_FAILURE)}")

    @property
    def step_budget(self) -> int:
        """diffrax's static max_steps: at least num_steps for constant steps."""
        if self.num_steps is None:
            return int(self.max_steps)
        return max(int(self.max_steps), int(self.num_steps))


def options_from_config(section, **overrides) -> Options:
    """``Options`` from a config section with fields solver, rtol, atol, num_steps
    (0 = adaptive) and max_steps (e.g. config.eval.ode, config.lfm.push_ode);
    ``overrides`` replace fields (e.g. on_failure="nan")."""
    fields = dict(solver=section.solver, rtol=float(section.rtol),
                  atol=float(section.atol), num_steps=int(section.num_steps) or None,
                  max_steps=int(section.max_steps))
    fields.update(overrides)
    return Options(**fields)


def _all_finite(tree):
    """Scalar bool: every entry of every leaf of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf))
                              for leaf in jax.tree_util.tree_leaves(tree)]))


def _solve(f, y0, t0, t1, rtol, atol, save_times, num_steps, *, solver, max_steps,
           on_failure="raise"):
    """Solve dy/dt = f(t, y) for ONE example (y0 any pytree) with diffrax.

    ``t0, t1, rtol, atol, save_times`` and ``num_steps`` (an integer array, or None
    for adaptive steps) are traced, so new values do not recompile; ``solver``,
    ``max_steps`` (already >= num_steps) and ``on_failure`` are static. Returns y(t1)
    (same pytree as y0), or, with ``save_times`` of shape (T,), the states at those
    times, each leaf with a leading axis of length T.

    on_failure="raise": diffrax's ``throw=True`` (a failed solve raises at run time).
    on_failure="nan": ``throw=False``; if the solve did not succeed, or y0 is not
    finite (then it is not solved: a zero start stands in, so a NaN row cannot stall
    a vmapped batch), every returned leaf is NaN.
    """
    nan_on_failure = on_failure == "nan"
    if nan_on_failure:
        start_ok = _all_finite(y0)
        y0 = jax.tree_util.tree_map(
            lambda leaf: jnp.where(start_ok, leaf, jnp.zeros_like(leaf)), y0)
    solver_cls, _ = SOLVERS[solver]
    if num_steps is not None:
        controller = diffrax.ConstantStepSize()
        dt0 = (t1 - t0) / num_steps
    else:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = None  # diffrax picks the first step; its sign follows t1 - t0.
    if save_times is None:
        saveat = diffrax.SaveAt(t1=True)
    else:
        saveat = diffrax.SaveAt(ts=save_times)
    sol = diffrax.diffeqsolve(
        _TERM,
        solver_cls(),
        t0,
        t1,
        dt0,
        y0,
        args=f,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=not nan_on_failure,
    )
    ys = sol.ys
    if nan_on_failure:
        ok = start_ok & (sol.result == diffrax.RESULTS.successful)
        ys = jax.tree_util.tree_map(
            lambda leaf: jnp.where(ok, leaf, jnp.full_like(leaf, jnp.nan)), ys)
    if save_times is None:
        return jax.tree_util.tree_map(lambda leaf: leaf[0], ys)
    return ys


@eqx.filter_jit
def _integrate_compiled(b, x, t0, t1, rtol, atol, save_times, num_steps, *, solver,
                        max_steps, batched, chunk_size, on_failure):
    """Body of ``integrate``: x (n, ...) -> (n, ...) or (T, n, ...). Compiled once per
    (b, shapes, static options)."""
    def solve_one(xi):
        return _solve(b, xi, t0, t1, rtol, atol, save_times, num_steps,
                      solver=solver, max_steps=max_steps, on_failure=on_failure)

    if not batched:
        return solve_one(x)
    out = distributed.map_in_chunks(jax.vmap(solve_one), x, chunk_size)
    return out if save_times is None else jnp.moveaxis(out, 1, 0)


def _as_array(value):
    return None if value is None else jnp.asarray(value)


def _split(options: Options, chunk_size):
    """(traced rtol, atol, num_steps; static keywords) of checked options: the
    tolerances and step count are arrays, so new values do not recompile."""
    if not isinstance(options, Options):
        raise TypeError(f"options must be an ode.Options, got {type(options).__name__}")
    traced = (jnp.asarray(options.rtol), jnp.asarray(options.atol),
              _as_array(options.num_steps))
    static = dict(solver=options.solver, max_steps=options.step_budget,
                  on_failure=options.on_failure,
                  chunk_size=None if chunk_size is None else int(chunk_size))
    return traced, static


def integrate(
    b: Velocity,
    x: jax.Array,
    t0=0.0,
    t1=1.0,
    *,
    options: Options = Options(),
    save_times=None,
    batched: bool = True,
    chunk_size: Optional[int] = None,
) -> jax.Array:
    """Solve dx/dt = b(t, x), x(t0) = x, and return x(t1) (or x at ``save_times``).

    t1 < t0 integrates backward in time, so
    ``integrate(b, integrate(b, x, 0, 1), 1, 0)`` returns x up to solver error.

    Args:
        b: velocity of one example, ``b(t, x) -> dx/dt`` with x of the example shape.
            A closure over parameters, or ``jax.tree_util.Partial(velocity, params)``
            (then new parameter values reuse the compiled solve).
        x: start states, shape (n, ...) if ``batched`` else one example of shape (...).
        t0, t1: start and end times (scalars; may be traced).
        options: solver, tolerances, steps and failure handling (``Options``).
        save_times: optional times, shape (T,), monotone in the direction t0 -> t1
            and inside [min(t0, t1), max(t0, t1)].
        batched: if True, the leading axis of x is the batch and each example is solved
            independently (``jax.vmap``, each with its own adaptive step sizes).
        chunk_size: if given, the batch goes through ``chunk_size`` examples at a time
            (``distributed.map_in_chunks``: ``lax.map`` over padded chunks), so memory
            is that of one chunk; the result is the same.

    Returns:
        x(t1), the same shape and dtype as x; or, with ``save_times``, shape
        (T, n, ...) (batched) or (T, ...) (one example).

    The solve is compiled (``equinox.filter_jit``) once per velocity object, shapes and
    static options; new x, t0, t1, rtol, atol or save_times values reuse it. It also
    works inside the caller's ``jax.jit``, ``vmap`` and ``grad``.
    """
    (rtol, atol, num_steps), static = _split(options, chunk_size)
    return _integrate_compiled(b, x, jnp.asarray(t0), jnp.asarray(t1), rtol, atol,
                               _as_array(save_times), num_steps, batched=bool(batched),
                               **static)


# -------------------------------------------------------------------------- divergence

def _flat_velocity(b, t, shape):
    """The map R^d -> R^d, y -> vec(b(t, unvec(y))), for examples of ``shape``."""
    return lambda y: b(t, y.reshape(shape)).reshape(-1)


def _exact_velocity_and_divergence(b, t, x, probes):
    """(b(t, x), tr J) with J = d vec(b) / d vec(x) of shape (d, d) from ``jacfwd``.

    Costs d forward-mode passes: use for small d. ``probes`` is ignored.
    """
    del probes
    f = _flat_velocity(b, t, x.shape)
    jac, v = jax.jacfwd(lambda y: (f(y), f(y)), has_aux=True)(x.reshape(-1))
    return v.reshape(x.shape), jnp.trace(jac)


def _hutchinson_velocity_and_divergence(b, t, x, probes):
    """(b(t, x), mean_k eps_k^T J eps_k), probes eps of shape (K, *x.shape).

    Unbiased for tr J when E[eps eps^T] = I (Rademacher or standard Gaussian).
    J eps_k is a forward-mode product (``jax.linearize``), one per probe.
    """
    v, jvp = jax.linearize(lambda y: b(t, y), x)
    jeps = jax.vmap(jvp)(probes)
    axes = tuple(range(1, probes.ndim))
    return v, jnp.mean(jnp.sum(probes * jeps, axis=axes))


# name -> (velocity_and_divergence, needs probes?)
DIVERGENCES = {
    "exact": (_exact_velocity_and_divergence, False),
    "hutchinson": (_hutchinson_velocity_and_divergence, True),
}

PROBES = {
    "rademacher": lambda key, shape, dtype: jax.random.rademacher(key, shape, dtype),
    "gaussian": lambda key, shape, dtype: jax.random.normal(key, shape, dtype),
}


def draw_probes(key, shape, n_probes: int = 1, dtype=jnp.float32, probe="rademacher"):
    """Hutchinson probes eps of shape (n_probes, *shape) with E[eps eps^T] = I.

    ``probe`` is "rademacher" (entries +-1, lower variance) or "gaussian" (N(0, 1)).
    """
    draw = _lookup(PROBES, probe, "probe distribution")
    return draw(key, (int(n_probes),) + tuple(shape), dtype)


def divergence(
    b: Velocity,
    t,
    x: jax.Array,
    key=None,
    method: str = "exact",
    n_probes: int = 1,
    *,
    probe: str = "rademacher",
    probes=None,
) -> jax.Array:
    """Divergence div_x b(t, x) = tr(d vec b(t, x) / d vec x) of ONE example.

    - "exact": trace of the full (d, d) Jacobian from ``jax.jacfwd`` on the flattened
      example (d = x.size); d forward passes.
    - "hutchinson": (1/K) sum_k eps_k^T J eps_k with K = n_probes probes drawn from
      ``key`` (``probe`` = "rademacher" or "gaussian"), or the given ``probes`` of shape
      (K, *x.shape); one forward-mode jvp per probe. Unbiased, stochastic.

    Args:
        b: velocity of one example.
        t: scalar time.
        x: one example, any shape.

    Returns:
        scalar, dtype of b's output.
    """
    fn, needs_probes = _lookup(DIVERGENCES, method, "divergence method")
    if needs_probes and probes is None:
        if key is None:
            raise ValueError("method='hutchinson' needs a key (or probes)")
        probes = draw_probes(key, x.shape, n_probes, x.dtype, probe)
    return fn(b, t, x, probes)[1]


# ------------------------------------------------------------------------- log-density

def standard_normal_log_prob(x: jax.Array) -> jax.Array:
    """log N(x; 0, I) = -|x|^2 / 2 - (d / 2) log(2 pi) of ONE example, d = x.size.

    Returns a scalar (nats).
    """
    return -0.5 * jnp.sum(jnp.square(x)) - 0.5 * x.size * math.log(2.0 * math.pi)


def _augmented_velocity(b, vel_div, probes, t, state):
    """Velocity of the augmented state (x, delta): (b(t, x), div b(t, x))."""
    y, _ = state
    v, div = vel_div(b, t, y, probes)
    return v, div.astype(y.dtype)


def _log_prob_one(b, x, index, base_log_prob, key, t_data, t_base, rtol, atol,
                  num_steps, *, method, n_probes, probe, solver, max_steps,
                  on_failure):
    """(log p_{t_data}(x), x_base) for ONE example; see ``log_prob``."""
    vel_div, needs_probes = DIVERGENCES[method]
    probes = None
    if needs_probes:
        # One probe set per example, fixed along the whole trajectory (FFJORD).
        probes = draw_probes(jax.random.fold_in(key, index), x.shape, n_probes,
                             x.dtype, probe)
    # A pytree Partial rather than a closure: probes stay traced arguments.
    augmented = jax.tree_util.Partial(_augmented_velocity, b, vel_div, probes)
    x_base, delta = _solve(
        augmented, (x, jnp.zeros((), x.dtype)), t_data, t_base, rtol, atol, None,
        num_steps, solver=solver, max_steps=max_steps, on_failure=on_failure,
    )
    # with on_failure="nan", a failed solve gives NaN x_base and delta, so NaN log p.
    # delta = int_{t_data}^{t_base} div b(t, x(t)) dt (signed: a negative-direction
    # integral if t_base < t_data), and log p_{t_base}(x_base) - log p_{t_data}(x)
    # = -delta along the trajectory.
    return base_log_prob(x_base) + delta, x_base


@eqx.filter_jit
def _log_prob_compiled(b, x, indices, base_log_prob, key, t_data, t_base, rtol, atol,
                       num_steps, *, chunk_size, **static):
    """Batched body of ``log_prob``: x (n, ...) -> ((n,), (n, ...)). Example i draws
    its Hutchinson probes from fold_in(key, indices[i])."""
    def batch(chunk):
        xs, idx = chunk
        return jax.vmap(
            lambda xi, i: _log_prob_one(b, xi, i, base_log_prob, key, t_data, t_base,
                                        rtol, atol, num_steps, **static)
        )(xs, idx)

    return distributed.map_in_chunks(batch, (x, indices), chunk_size)


def log_prob(
    b: Velocity,
    x: jax.Array,
    base_log_prob: Callable[[jax.Array], jax.Array],
    *,
    options: Options = Options(),
    t_data=1.0,
    t_base=0.0,
    method: str = "exact",
    key=None,
    n_probes: int = 1,
    probe: str = "rademacher",
    batched: bool = True,
    chunk_size: Optional[int] = None,
    indices=None,
    return_base: bool = False,
):
    """Log-density (nats) of x under the flow of b: instantaneous change of variables.

    If X_t solves dx/dt = b(t, x) and p_t is its law, then
    d/dt log p_t(X_t) = -div b(t, X_t). Integrating the augmented ODE
        dx/dt = b(t, x),  d delta/dt = div b(t, x),  x(t_data) = x, delta(t_data) = 0
    from t_data to t_base gives
        log p_{t_data}(x) = log p_{t_base}(x(t_base)) + delta(t_base)
                          = base_log_prob(x_base) + int_{t_data}^{t_base} div b dt.
    Plain flow matching (noise at 0, data at 1): t_data=1, t_base=0, so
        log p_1(x) = log p_0(X_{1,0}(x)) - int_0^1 div b(t, x(t)) dt.
    LFM blocks (data at 0, noise at 1): t_data=0, t_base=1, so
        log p_0(x) = log p_1(X_{0,1}(x)) + int_0^1 div b(t, x(t)) dt.

    Args:
        b: velocity of one example (see the module docstring on closures).
        x: points, shape (n, ...) if ``batched`` else one example.
        base_log_prob: log-density of ONE example at time t_base, returning a scalar
            (e.g. ``standard_normal_log_prob``); static, so reuse one function object.
        options: as in ``integrate``; with on_failure="nan" an example whose augmented
            solve did not succeed gets log p = NaN (and NaN base point) instead of
            ending the whole batch; count them with ``jnp.isnan``.
        t_data, t_base: the time at which x lives and the time of the base density.
        method: "exact" (Jacobian trace; d forward passes per step) or "hutchinson"
            (needs ``key``). With Hutchinson, example i draws ``n_probes`` probes once
            from ``fold_in(key, indices[i])`` and keeps them along its trajectory
            (FFJORD), so the augmented ODE is deterministic and its solution is an
            unbiased estimate of the exact one (up to solver error).
        probe: "rademacher" or "gaussian" Hutchinson probes.
        chunk_size: as in ``integrate`` (the same result, memory of one chunk).
        indices: (n,) integer global row index of each example (default arange(n); 0
            for one example): pass the rows' positions in the whole data set when x is
            a slice of it, so the probes, hence the result, do not depend on how the
            data set is cut into chunks or devices.
        return_base: also return the base points x(t_base).

    Returns:
        log p_{t_data}(x), shape (n,) (a scalar if not ``batched``); with
        ``return_base``, also the base points x(t_base) of x's shape.
    """
    traced, static = _split(options, chunk_size)
    _, needs_probes = _lookup(DIVERGENCES, method, "divergence method")
    _lookup(PROBES, probe, "probe distribution")
    if needs_probes and key is None:
        raise ValueError("method='hutchinson' needs a key")
    xs = x if batched else x[None]
    if indices is None:
        indices = jnp.arange(xs.shape[0])
    indices = jnp.reshape(jnp.asarray(indices), (xs.shape[0],))
    logp, x_base = _log_prob_compiled(
        b, xs, indices, base_log_prob, key if needs_probes else None,
        jnp.asarray(t_data), jnp.asarray(t_base), *traced, method=method,
        n_probes=int(n_probes), probe=probe, **static)
    if not batched:
        logp, x_base = logp[0], x_base[0]
    return (logp, x_base) if return_base else logp
