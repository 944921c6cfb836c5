"""ODE integration, divergence and change-of-variables log-density (diffrax).

A velocity field is a closure ``b(t, x) -> dx/dt`` of ONE example: ``t`` a scalar,
``x`` an array of the example's shape (``(D,)`` or e.g. ``(H, W, C)``); parameters are
bound inside the closure. Batches are handled here with ``jax.vmap``, so every example
is solved on its own (adaptive solvers pick each example's step sizes separately).

Public functions:

- ``integrate(b, x, t0, t1, ...)``: solve dx/dt = b(t, x) from t0 to t1 (t1 < t0 runs
  backward in time).
- ``integrate_chunked(b, x, chunk_size, ...)``: the same over a large batch, ``lax.map``
  over chunks so memory is bounded by one chunk.
- ``divergence(b, t, x, ...)``: div_x b(t, x) = tr(d b / d x), exact or Hutchinson.
- ``log_prob(b, x, base_log_prob, ...)``: log-density (nats) by the instantaneous
  change of variables, integrating the augmented ODE (x, delta).
- ``log_prob_chunked(b, x, base_log_prob, chunk_size, ...)``: the same in chunks.
- ``standard_normal_log_prob(x)``: log N(x; 0, I) of one example.

Failed solves: by default (``on_failure="raise"``) a solve that does not succeed (e.g.
diffrax's step budget ``max_steps`` is exhausted in a stiff region, or the velocity is
non-finite) raises at run time and the whole batch is lost. With ``on_failure="nan"``
(every solving function takes it) each example is solved with diffrax's
``throw=False`` and the examples whose solve failed (``sol.result !=
diffrax.RESULTS.successful``), or whose start state is not finite, come back as NaN
while the others keep their values: evaluation code can then drop or count them
(``jnp.isnan``). ``on_failure`` is a Python string, chosen outside ``jit``.

Solvers and divergence estimators are chosen by name from the registries ``SOLVERS``,
``DIVERGENCES`` and ``PROBES`` in Python, outside any traced code. Every function works
inside ``jax.jit`` / ``vmap`` / ``grad`` (names, ``num_steps``, ``max_steps``,
``chunk_size``, ``n_probes`` and ``on_failure`` must be Python values, i.e. static).

Compilation: ``integrate`` and ``log_prob`` compile their whole body with
``equinox.filter_jit``: arrays (x, times, tolerances, keys, and arrays inside a pytree
velocity) are traced; callables are static, keyed by identity. A fresh closure
``lambda t, x: velocity(params, t, x)`` therefore recompiles on every call (and bakes
``params`` in as constants); pass ``jax.tree_util.Partial(velocity, params)`` instead,
or call from inside your own ``jax.jit``, to reuse one compiled solve across parameter
values.
"""
import math
from typing import Callable, Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

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


def _check_on_failure(on_failure):
    """Validate ``on_failure`` in Python ("raise" or "nan") and return it."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"unknown on_failure {on_failure!r}; expected one of "
                         f"{list(ON_FAILURE)}")
    return on_failure


def _all_finite(tree):
    """Scalar bool: every entry of every leaf of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf))
                              for leaf in jax.tree_util.tree_leaves(tree)]))


def _check_solver(solver, num_steps):
    """Validate a solver name and step count in Python, before any tracing."""
    _, adaptive = _lookup(SOLVERS, solver, "solver")
    if num_steps is None and not adaptive:
        raise ValueError(f"solver {solver!r} is fixed-step: pass num_steps")
    if num_steps is not None and int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


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


def _map_in_chunks(fn, xs, chunk_size):
    """Apply a batched ``fn`` to ``xs`` chunk by chunk with ``lax.map``.

    ``xs`` is a pytree of arrays with a common leading axis n; ``fn`` maps a chunk
    (leading axis ``chunk_size``) to a pytree with leading axis ``chunk_size``. The
    last chunk is padded by repeating the last example and the padding is cut off,
    so the result has leading axis n. Only one chunk is live at a time.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    chunk_size = max(1, min(int(chunk_size), n))
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n

    def to_chunks(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
        return a.reshape((n_chunks, chunk_size) + a.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(to_chunks, xs))
    return jax.tree_util.tree_map(
        lambda a: a.reshape((n_chunks * chunk_size,) + a.shape[2:])[:n], out
    )


@eqx.filter_jit
def _integrate_compiled(b, x, t0, t1, rtol, atol, save_times, num_steps, *, solver,
                        max_steps, batched, chunk_size, on_failure):
    """Body of ``integrate`` / ``integrate_chunked``: x (n, ...) -> (n, ...) or
    (T, n, ...). Compiled once per (b, shapes, static options)."""
    def solve_one(xi):
        return _solve(b, xi, t0, t1, rtol, atol, save_times, num_steps,
                      solver=solver, max_steps=max_steps, on_failure=on_failure)

    if not batched:
        return solve_one(x)
    if chunk_size is None:
        out = jax.vmap(solve_one)(x)  # (n, ...) or (n, T, ...)
    else:
        out = _map_in_chunks(jax.vmap(solve_one), x, chunk_size)
    return out if save_times is None else jnp.moveaxis(out, 1, 0)


def _as_array(value):
    return None if value is None else jnp.asarray(value)


def _step_budget(max_steps, num_steps):
    """diffrax's static max_steps: at least num_steps for constant steps."""
    return int(max_steps) if num_steps is None else max(int(max_steps), int(num_steps))


def integrate(
    b: Velocity,
    x: jax.Array,
    t0=0.0,
    t1=1.0,
    *,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: Optional[int] = None,
    max_steps: int = 4096,
    save_times=None,
    batched: bool = True,
    on_failure: str = "raise",
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
        solver: a key of ``SOLVERS``. "tsit5", "dopri5", "dopri8" are adaptive with
            ``PIDController(rtol, atol)``; "euler", "heun", "midpoint" are fixed-step
            and need ``num_steps``. Passing ``num_steps`` with an adaptive solver also
            makes it take ``num_steps`` constant steps dt0 = (t1 - t0) / num_steps.
        rtol, atol: tolerances of the adaptive step-size controller.
        num_steps: number of constant steps (Python int), or None for adaptive.
        max_steps: diffrax's step budget. Exceeding it raises at run time (diffrax's
            ``throw=True``: an ``EquinoxRuntimeError`` saying the maximum number of
            steps was reached); raise it or loosen rtol/atol if that happens, or use
            ``on_failure="nan"``.
        save_times: optional times, shape (T,), monotone in the direction t0 -> t1
            and inside [min(t0, t1), max(t0, t1)].
        batched: if True, the leading axis of x is the batch and each example is solved
            independently (``jax.vmap``, each with its own adaptive step sizes).
        on_failure: "raise" (default): a failed solve of any example raises at run
            time. "nan": solve with ``throw=False`` and return NaN (the whole example,
            every saved time) for the examples whose solve did not succeed or whose
            start is not finite; the others are unaffected. Static (a Python string).

    Returns:
        x(t1), the same shape and dtype as x; or, with ``save_times``, shape
        (T, n, ...) (batched) or (T, ...) (one example).

    Raises:
        ValueError: unknown solver name or on_failure, or a fixed-step solver without
            num_steps.

    The solve is compiled (``equinox.filter_jit``) once per velocity object, shapes and
    static options; new x, t0, t1, rtol, atol or save_times values reuse it. It also
    works inside the caller's ``jax.jit``, ``vmap`` and ``grad``.
    """
    _check_solver(solver, num_steps)
    return _integrate_compiled(
        b, x, jnp.asarray(t0), jnp.asarray(t1), jnp.asarray(rtol), jnp.asarray(atol),
        _as_array(save_times), _as_array(num_steps), solver=solver,
        max_steps=_step_budget(max_steps, num_steps), batched=bool(batched),
        chunk_size=None, on_failure=_check_on_failure(on_failure),
    )


def integrate_chunked(
    b: Velocity,
    x: jax.Array,
    chunk_size: int,
    t0=0.0,
    t1=1.0,
    *,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: Optional[int] = None,
    max_steps: int = 4096,
    save_times=None,
    on_failure: str = "raise",
) -> jax.Array:
    """``integrate`` over a large batch, ``chunk_size`` examples at a time.

    Same maths and result as ``integrate(b, x, t0, t1, ...)`` (batched), but the batch
    of shape (n, ...) is split into ceil(n / chunk_size) chunks (the last one padded)
    processed one after another by ``jax.lax.map``, so memory is that of one chunk.
    ``on_failure`` as in ``integrate`` ("nan": failed examples are NaN, per example).

    Returns:
        shape (n, ...), or (T, n, ...) with ``save_times``.
    """
    _check_solver(solver, num_steps)
    return _integrate_compiled(
        b, x, jnp.asarray(t0), jnp.asarray(t1), jnp.asarray(rtol), jnp.asarray(atol),
        _as_array(save_times), _as_array(num_steps), solver=solver,
        max_steps=_step_budget(max_steps, num_steps), batched=True,
        chunk_size=int(chunk_size), on_failure=_check_on_failure(on_failure),
    )


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
def _log_prob_compiled(b, x, base_log_prob, key, t_data, t_base, rtol, atol, num_steps,
                       *, chunk_size, **static):
    """Batched body of ``log_prob`` / ``log_prob_chunked``: x (n, ...) ->
    ((n,), (n, ...)). Example i draws its Hutchinson probes from fold_in(key, i)."""
    def batch(chunk):
        xs, idx = chunk
        return jax.vmap(
            lambda xi, i: _log_prob_one(b, xi, i, base_log_prob, key, t_data, t_base,
                                        rtol, atol, num_steps, **static)
        )(xs, idx)

    xs = (x, jnp.arange(x.shape[0]))
    return batch(xs) if chunk_size is None else _map_in_chunks(batch, xs, chunk_size)


def _log_prob_call(b, x, base_log_prob, chunk_size, *, t_data, t_base, method, key,
                   n_probes, probe, solver, rtol, atol, num_steps, max_steps,
                   on_failure):
    """Validate names in Python, make the numbers arrays, call the compiled body."""
    _check_solver(solver, num_steps)
    _, needs_probes = _lookup(DIVERGENCES, method, "divergence method")
    _lookup(PROBES, probe, "probe distribution")
    if needs_probes and key is None:
        raise ValueError("method='hutchinson' needs a key")
    return _log_prob_compiled(
        b, x, base_log_prob, key if needs_probes else None, jnp.asarray(t_data),
        jnp.asarray(t_base), jnp.asarray(rtol), jnp.asarray(atol),
        _as_array(num_steps), chunk_size=chunk_size, method=method,
        n_probes=int(n_probes), probe=probe, solver=solver,
        max_steps=_step_budget(max_steps, num_steps),
        on_failure=_check_on_failure(on_failure),
    )


def log_prob(
    b: Velocity,
    x: jax.Array,
    base_log_prob: Callable[[jax.Array], jax.Array],
    *,
    t_data=1.0,
    t_base=0.0,
    method: str = "exact",
    key=None,
    n_probes: int = 1,
    probe: str = "rademacher",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: Optional[int] = None,
    max_steps: int = 4096,
    batched: bool = True,
    return_base: bool = False,
    on_failure: str = "raise",
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
        t_data, t_base: the time at which x lives and the time of the base density.
        method: "exact" (Jacobian trace; d forward passes per step) or "hutchinson"
            (needs ``key``). With Hutchinson, example i draws ``n_probes`` probes once
            from ``fold_in(key, i)`` and keeps them along its trajectory (FFJORD), so
            the augmented ODE is deterministic and its solution is an unbiased
            estimate of the exact one (up to solver error).
        probe: "rademacher" or "gaussian" Hutchinson probes.
        solver, rtol, atol, num_steps, max_steps: as in ``integrate``; the tolerances
            cover the log-det state delta as well as x.
        return_base: also return the base points x(t_base).
        on_failure: "raise" (default) or "nan" (as in ``integrate``): with "nan", an
            example whose augmented solve did not succeed gets log p = NaN (and NaN
            base point) instead of ending the whole batch; count them with
            ``jnp.isnan``.

    Returns:
        log p_{t_data}(x), shape (n,) (a scalar if not ``batched``); with
        ``return_base``, also the base points x(t_base) of x's shape.
    """
    xs = x if batched else x[None]
    logp, x_base = _log_prob_call(
        b, xs, base_log_prob, None, t_data=t_data, t_base=t_base, method=method,
        key=key, n_probes=n_probes, probe=probe, solver=solver, rtol=rtol, atol=atol,
        num_steps=num_steps, max_steps=max_steps, on_failure=on_failure,
    )
    if not batched:
        logp, x_base = logp[0], x_base[0]
    return (logp, x_base) if return_base else logp


def log_prob_chunked(
    b: Velocity,
    x: jax.Array,
    base_log_prob: Callable[[jax.Array], jax.Array],
    chunk_size: int,
    *,
    t_data=1.0,
    t_base=0.0,
    method: str = "exact",
    key=None,
    n_probes: int = 1,
    probe: str = "rademacher",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: Optional[int] = None,
    max_steps: int = 4096,
    return_base: bool = False,
    on_failure: str = "raise",
):
    """``log_prob`` over a large batch (n, ...), ``chunk_size`` examples at a time.

    Same result as ``log_prob(b, x, base_log_prob, ...)``, Hutchinson probes included
    (they are keyed by the global example index), with memory bounded by one chunk
    (``jax.lax.map``). Returns shape (n,), and the base points if ``return_base``.
    ``on_failure`` as in ``log_prob`` ("nan": NaN for the examples that failed).
    """
    logp, x_base = _log_prob_call(
        b, x, base_log_prob, int(chunk_size), t_data=t_data, t_base=t_base,
        method=method, key=key, n_probes=n_probes, probe=probe, solver=solver,
        rtol=rtol, atol=atol, num_steps=num_steps, max_steps=max_steps,
        on_failure=on_failure,
    )
    return (logp, x_base) if return_base else logp
