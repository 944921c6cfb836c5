"""Tests for lfm_jax.ode against closed forms.

Gaussian flow (docs/maths.md section 5): x0 ~ N(0, I), x1 ~ N(m, sigma^2 I), linear interpolant:
mu_t = t m, sigma_t^2 = (1 - t)^2 + t^2 sigma^2,
b_t(x) = mu'_t + (sigma'_t / sigma_t)(x - mu_t),
X_{s,t}(x) = mu_t + (sigma_t / sigma_s)(x - mu_s).
Linear flow b(t, x) = A x with non-symmetric A: X_{s,t} = expm((t - s) A), div b = tr A.

Every diffrax solve with a new field, shape, dtype or solver compiles (about a second
on CPU), so the tests share fields and batch shapes (6 examples, D = 3) where they can.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import ml_collections
import numpy as np
import pytest

from lfm_jax import ode

D = 3
N = 6
M = np.array([1.0, -2.0, 0.5])
SIGMA = 0.5
A = np.array([[0.2, 1.0, 0.0], [-0.7, -0.3, 0.4], [0.1, -0.5, 0.1]])
TIGHT = dict(options=ode.Options(rtol=1e-10, atol=1e-10))


def sigma_t(t):
    return jnp.sqrt((1.0 - t) ** 2 + t**2 * SIGMA**2)


def gaussian_velocity(t, x):
    """Exact FM velocity of one example for the Gaussian closed form."""
    s = sigma_t(t)
    ds = (-(1.0 - t) + t * SIGMA**2) / s
    m = jnp.asarray(M, x.dtype)
    return m + (ds / s) * (x - t * m)


def gaussian_flow_map(s, t, x):
    """X_{s,t}(x) on a batch x of shape (n, D)."""
    m = jnp.asarray(M, x.dtype)[None, :]
    return t * m + (sigma_t(t) / sigma_t(s)) * (x - s * m)


def gaussian_log_prob(x, mean, std):
    """log N(x; mean, std^2 I) of one example."""
    return jnp.sum(jsp.stats.norm.logpdf(x, jnp.asarray(mean, x.dtype), std))


def linear_velocity(t, x):
    return jnp.asarray(A, x.dtype) @ x


def nonlinear_velocity(t, x):
    """A smooth field with a non-constant, non-diagonal Jacobian."""
    a = jnp.asarray(A, x.dtype)
    return a @ x + 0.5 * (1.0 + t) * jnp.tanh(a.T @ x)


def points(n=N, dtype=jnp.float64, seed=0):
    """Standard normal points of shape (n, D) (numpy RNG: nothing to compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, D)), dtype)


def test_integrate_matches_exact_flow_map(x64):
    x = points()
    x1 = ode.integrate(gaussian_velocity, x, 0.0, 1.0, **TIGHT)
    assert x1.shape == x.shape and x1.dtype == jnp.float64
    np.testing.assert_allclose(x1, gaussian_flow_map(0.0, 1.0, x), atol=1e-7)
    np.testing.assert_allclose(
        ode.integrate(gaussian_velocity, x, 0.3, 0.8, **TIGHT),
        gaussian_flow_map(0.3, 0.8, x), atol=1e-7,
    )
    # backward in time (dopri8), and the round trip
    np.testing.assert_allclose(
        ode.integrate(gaussian_velocity, x, 0.8, 0.3,
                      options=ode.Options(solver="dopri8", rtol=1e-10, atol=1e-10)),
        gaussian_flow_map(0.8, 0.3, x), atol=1e-7,
    )
    x_back = ode.integrate(gaussian_velocity, x1, 1.0, 0.0, **TIGHT)
    np.testing.assert_allclose(x_back, x, atol=1e-7)
    # save_times: (T, n, D)
    ts = jnp.array([0.1, 0.5, 0.9])
    traj = ode.integrate(gaussian_velocity, x, 0.0, 1.0, save_times=ts, **TIGHT)
    assert traj.shape == (3, N, D)
    want = jnp.stack([gaussian_flow_map(0.0, t, x) for t in ts])
    np.testing.assert_allclose(traj, want, atol=1e-7)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_fixed_step_convergence_order(x64, solver, order):
    """Error of X_{0,1} falls like num_steps^-order (halves per doubling for euler).

    euler and heun on the Gaussian closed form; midpoint happens to be third-order
    accurate at t = 1 on that field (error cancellation), so it is checked on the
    linear field against expm(A).
    """
    x = points()
    if solver == "midpoint":
        field, exact = linear_velocity, x @ jsp.linalg.expm(jnp.asarray(A)).T
    else:
        field, exact = gaussian_velocity, gaussian_flow_map(0.0, 1.0, x)
    errors = [
        float(jnp.max(jnp.abs(
            ode.integrate(field, x, options=ode.Options(solver, num_steps=n)) - exact)))
        for n in (16, 32, 64)
    ]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(np.log2(ratios), order, atol=0.25)
    if solver == "euler":  # one example, unbatched
        one = ode.integrate(field, x[0], options=ode.Options(solver, num_steps=16),
                            batched=False)
        np.testing.assert_allclose(
            one, ode.integrate(field, x, options=ode.Options(solver, num_steps=16))[0], rtol=1e-12)


def test_adaptive_solver_with_num_steps_uses_constant_steps(x64):
    x = points()
    exact = gaussian_flow_map(0.0, 1.0, x)
    out = ode.integrate(gaussian_velocity, x,
                        options=ode.Options("dopri5", num_steps=20))
    err = jnp.max(jnp.abs(out - exact))
    assert 1e-12 < err < 1e-5  # fifth order, 20 steps: small but not tolerance-level


def test_integrate_jits_with_traced_params_and_times(x64):
    x = points()
    a = jnp.asarray(A)

    @jax.jit
    def final(theta, t1):
        return ode.integrate(lambda t, y: theta * (a @ y), x, 0.0, t1, **TIGHT)

    for theta, t1 in ((1.0, 1.0), (0.5, -0.6)):
        np.testing.assert_allclose(final(theta, t1),
                                   x @ jsp.linalg.expm(theta * t1 * a).T, atol=1e-7)


def test_integrate_traces_once_per_velocity():
    """With b = Partial(velocity, params), new params, x, t0, t1, rtol reuse the
    compiled solve (the velocity's Python body is traced only for the first call)."""
    traces = [0]

    def velocity(a, t, x):
        traces[0] += 1
        return a @ x

    a = jnp.asarray(A, jnp.float32)
    x = points(dtype=jnp.float32)
    y = ode.integrate(jax.tree_util.Partial(velocity, a), x, 0.0, 1.0)
    first = traces[0]
    x_back = ode.integrate(jax.tree_util.Partial(velocity, a), y, 1.0, 0.0)
    z = ode.integrate(jax.tree_util.Partial(velocity, 0.5 * a), x, 0.2, 0.7,
                      options=ode.Options(rtol=1e-6))
    assert traces[0] == first
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    np.testing.assert_allclose(z, x @ jsp.linalg.expm(0.25 * A).T, atol=1e-4)


def test_log_prob_noise_at_zero(x64):
    """Plain FM convention: base N(0, I) at t=0, data N(m, sigma^2 I) at t=1."""
    x = jnp.asarray(M)[None, :] + SIGMA * points(seed=1)
    logp, x_base = ode.log_prob(gaussian_velocity, x, ode.standard_normal_log_prob,
                                t_data=1.0, t_base=0.0, return_base=True, **TIGHT)
    assert logp.shape == (N,)
    want = jax.vmap(lambda xi: gaussian_log_prob(xi, M, SIGMA))(x)
    np.testing.assert_allclose(logp, want, atol=1e-7)
    np.testing.assert_allclose(x_base, gaussian_flow_map(1.0, 0.0, x), atol=1e-7)


def test_log_prob_data_at_zero(x64):
    """LFM convention: data at t=0, noise at t=1 (integrate forward to the base).

    The time-reversed Gaussian flow b~(t, x) = -b(1 - t, x) carries the data law
    N(m, sigma^2 I) at t=0 to N(0, I) at t=1.
    """
    reversed_velocity = lambda t, y: -gaussian_velocity(1.0 - t, y)  # noqa: E731
    y = jnp.asarray(M)[None, :] + SIGMA * points(seed=2)
    logp, y_base = ode.log_prob(reversed_velocity, y, ode.standard_normal_log_prob,
                                t_data=0.0, t_base=1.0, return_base=True, **TIGHT)
    want = jax.vmap(lambda yi: gaussian_log_prob(yi, M, SIGMA))(y)
    np.testing.assert_allclose(logp, want, atol=1e-7)
    np.testing.assert_allclose(y_base, gaussian_flow_map(1.0, 0.0, y), atol=1e-7)


def test_exact_divergence_non_symmetric_linear_flow(x64):
    a = jnp.asarray(A)
    x = points(seed=3)
    divs = jax.vmap(lambda xi: ode.divergence(linear_velocity, 0.5, xi))(x)
    np.testing.assert_allclose(divs, jnp.trace(a), rtol=1e-12)
    # non-1D examples: b(t, x) = unvec(K vec x) on (2, 3) examples, div = tr K
    k = jnp.asarray(np.random.default_rng(4).standard_normal((6, 6)))
    b_mat = lambda t, y: (k @ y.reshape(-1)).reshape(y.shape)  # noqa: E731
    np.testing.assert_allclose(ode.divergence(b_mat, 0.0, x[:2]), jnp.trace(k),
                               rtol=1e-12)
    # pushforward of N(0, I) by E = expm(A): N(0, E E^T), log|det E| = tr A
    e = jsp.linalg.expm(a)
    y = x @ e.T
    logp, x_base = ode.log_prob(linear_velocity, y, ode.standard_normal_log_prob,
                                return_base=True, **TIGHT)
    np.testing.assert_allclose(x_base, x, atol=1e-7)
    want = jax.vmap(lambda yi: jsp.stats.multivariate_normal.logpdf(
        yi, jnp.zeros(D), e @ e.T))(y)
    np.testing.assert_allclose(logp, want, atol=1e-7)
    np.testing.assert_allclose(
        logp, jax.vmap(ode.standard_normal_log_prob)(x) - jnp.trace(a), atol=1e-7)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_unbiased(probe):
    x = points(1, jnp.float32)[0]
    exact = ode.divergence(nonlinear_velocity, 0.3, x)
    n = 4000
    many = ode.divergence(nonlinear_velocity, 0.3, x, key=jax.random.key(0),
                          method="hutchinson", n_probes=n, probe=probe)
    single = jax.vmap(lambda k: ode.divergence(
        nonlinear_velocity, 0.3, x, key=k, method="hutchinson", probe=probe))(
        jax.random.split(jax.random.key(1), n))
    se = jnp.std(single) / math.sqrt(n)
    assert jnp.std(single) > 1e-2
    assert abs(many - exact) < 4 * se
    assert abs(jnp.mean(single) - exact) < 4 * se


def test_hutchinson_log_prob_unbiased(x64):
    """Mean over independent keys matches the exact log-density within 4 s.e."""
    x = points(seed=5).at[1].set(points(seed=5)[0])  # a repeated point
    kw = dict(options=ode.Options(rtol=1e-7, atol=1e-7))
    exact = ode.log_prob(nonlinear_velocity, x, ode.standard_normal_log_prob, **kw)
    n_keys = 256
    keys = jax.random.split(jax.random.key(6), n_keys)
    estimates = jax.jit(jax.vmap(lambda k: ode.log_prob(
        nonlinear_velocity, x, ode.standard_normal_log_prob, method="hutchinson",
        key=k, **kw)))(keys)
    assert estimates.shape == (n_keys, N)
    spread = jnp.std(estimates, axis=0)
    assert jnp.all(spread > 1e-3)  # genuinely stochastic
    se = spread / math.sqrt(n_keys)
    assert jnp.all(jnp.abs(jnp.mean(estimates, axis=0) - exact) < 4 * se)
    # each example draws its own probes from fold_in(key, index)
    assert jnp.any(estimates[:, 0] != estimates[:, 1])
    # chunked (4 + 2 padded) keeps the global example index, so the same probes
    chunked = ode.log_prob(nonlinear_velocity, x, ode.standard_normal_log_prob,
                           chunk_size=4, method="hutchinson", key=keys[0], **kw)
    np.testing.assert_allclose(chunked, estimates[0], rtol=1e-10)
    # indices: the rows of a slice keep their probes (keyed by the global row)
    tail = ode.log_prob(nonlinear_velocity, x[2:], ode.standard_normal_log_prob,
                        indices=jnp.arange(2, N), method="hutchinson", key=keys[0], **kw)
    np.testing.assert_allclose(tail, estimates[0][2:], rtol=1e-10)


def test_integrate_in_chunks_equals_integrate(x64):
    """6 examples in chunks of 4 (the last one padded) give the unchunked result."""
    x = points(seed=8)
    steps = dict(options=ode.Options("heun", num_steps=8))
    full = ode.integrate(gaussian_velocity, x, 0.0, 1.0, **steps)
    ts = jnp.array([0.5, 1.0])
    traj = ode.integrate(gaussian_velocity, x, save_times=ts, chunk_size=4, **steps)
    assert traj.shape == (2, N, D)
    np.testing.assert_allclose(traj[-1], full, rtol=1e-12)


def test_unknown_names_and_missing_arguments_raise():
    x = points(dtype=jnp.float32)
    with pytest.raises(ValueError, match="tsit5"):
        ode.Options(solver="rk4")
    with pytest.raises(ValueError, match="num_steps"):
        ode.Options(solver="euler")
    with pytest.raises(TypeError, match="Options"):
        ode.integrate(linear_velocity, x, options={"solver": "tsit5"})
    with pytest.raises(ValueError, match="exact"):
        ode.log_prob(linear_velocity, x, ode.standard_normal_log_prob, method="trace")
    with pytest.raises(ValueError, match="key"):
        ode.log_prob(linear_velocity, x, ode.standard_normal_log_prob,
                     method="hutchinson")
    with pytest.raises(ValueError, match="dopri5"):
        ode.options_from_config(ml_collections.ConfigDict(dict(
            solver="x", rtol=1e-5, atol=1e-5, num_steps=0, max_steps=10)))
    with pytest.raises(ValueError, match="gaussian"):
        ode.divergence(linear_velocity, 0.0, x[0], key=jax.random.key(0),
                       method="hutchinson", probe="sphere")


def test_max_steps_exceeded_raises():
    x = points(dtype=jnp.float32)
    with pytest.raises(Exception, match="(?i)max"):
        jax.block_until_ready(
            ode.integrate(nonlinear_velocity, x,
                          options=ode.Options(rtol=1e-8, atol=1e-8, max_steps=2)))


def rate_velocity(t, x):
    """dx/dt = (0, -k x[1:]) with k = x[0], constant along the flow: an example's
    stiffness is set by its own first coordinate (k = 1e4 needs thousands of explicit
    steps on [0, 1], k <= 2 fewer than 10). Exact flow x[1:] exp(-k t); div = -k (D-1)."""
    k = x[0]
    return jnp.concatenate([jnp.zeros(1, x.dtype), -k * x[1:]])


# rows 0, 1, 3 easy (k = 0, 1, 2), row 2 stiff (k = 1e4), row 4 a non-finite start
RATE_X = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, -1.0], [1e4, 1.0, 1.0],
                   [2.0, 0.5, 0.5], [np.nan, 1.0, 1.0]])
RATE_FAILS = np.array([False, False, True, False, True])
RATE = ode.Options(rtol=1e-6, atol=1e-6, max_steps=16)
RATE_NAN = dataclasses.replace(RATE, on_failure="nan")


def rate_flow_map(x, t):
    x = np.asarray(x)
    return np.concatenate([x[:, :1], x[:, 1:] * np.exp(-x[:, :1] * t)], axis=1)


def test_on_failure_nan_marks_exactly_the_failed_examples(x64):
    x = jnp.asarray(RATE_X)
    good = ~RATE_FAILS
    out = ode.integrate(rate_velocity, x, 0.0, 1.0, options=RATE_NAN)
    assert out.shape == x.shape
    np.testing.assert_array_equal(np.isnan(out).all(axis=1), RATE_FAILS)
    assert not np.isnan(out[good]).any()
    np.testing.assert_allclose(out[good], rate_flow_map(RATE_X[good], 1.0), atol=1e-5)
    # chunked (chunks of 2, last padded), save_times, and one example
    ts = jnp.array([0.5, 1.0])
    traj = ode.integrate(rate_velocity, x, save_times=ts, options=RATE_NAN, chunk_size=2)
    assert traj.shape == (2, 5, D)
    np.testing.assert_array_equal(np.isnan(traj).all(axis=(0, 2)), RATE_FAILS)
    np.testing.assert_allclose(traj[0][good], rate_flow_map(RATE_X[good], 0.5),
                               atol=1e-5)
    one = ode.integrate(rate_velocity, x[2], options=RATE_NAN, batched=False)
    assert np.isnan(one).all()
    # the easy examples alone never fail: the same values as "raise"
    np.testing.assert_allclose(
        ode.integrate(rate_velocity, x[good], options=RATE), out[good], rtol=1e-12)


def test_on_failure_nan_log_prob(x64):
    """Data at t=0, zero base at t=1: log p = int_0^1 div dt = -k (D - 1)."""
    x = jnp.asarray(RATE_X)
    zero = lambda y: jnp.zeros((), y.dtype)  # noqa: E731
    kw = dict(t_data=0.0, t_base=1.0, options=RATE_NAN)
    logp, x_base = ode.log_prob(rate_velocity, x, zero, return_base=True, **kw)
    np.testing.assert_array_equal(np.isnan(logp), RATE_FAILS)
    np.testing.assert_array_equal(np.isnan(x_base).all(axis=1), RATE_FAILS)
    good = ~RATE_FAILS
    np.testing.assert_allclose(logp[good], -RATE_X[good, 0] * (D - 1), atol=1e-5)
    chunked = ode.log_prob(rate_velocity, x, zero, chunk_size=2, **kw)
    np.testing.assert_array_equal(np.asarray(chunked), np.asarray(logp))
    hutch = ode.log_prob(rate_velocity, x, zero, method="hutchinson",
                         key=jax.random.key(0), **kw)
    np.testing.assert_array_equal(np.isnan(hutch), RATE_FAILS)


def test_on_failure_raise_still_raises_and_names_are_checked(x64):
    x = jnp.asarray(RATE_X[:4])
    with pytest.raises(Exception, match="(?i)max"):
        jax.block_until_ready(ode.integrate(rate_velocity, x, options=RATE))
    with pytest.raises(Exception, match="(?i)max"):
        jax.block_until_ready(ode.log_prob(
            rate_velocity, x, ode.standard_normal_log_prob, t_data=0.0, t_base=1.0,
            options=RATE))
    with pytest.raises(ValueError, match="nan"):
        ode.Options(on_failure="ignore")
    with pytest.raises(ValueError, match="raise"):
        dataclasses.replace(RATE, on_failure="skip")


_FAILED_RAISE_SCRIPT = '''
import jax, jax.numpy as jnp, numpy as np
from lfm_jax import lfm, ode
def v(params, t, x):
    return jnp.concatenate([jnp.zeros(1, x.dtype), -x[0] * x[1:]])
model = lfm.LocalFlow(v, lfm.step_sizes(1, c=0.2, rho=1.0), (3,),
                      ode=ode.Options(rtol=1e-4, atol=1e-4, max_steps=16), chunk_size=4)
try:
    model.log_prob([jnp.float32(1.0)], np.array([[0.0, 1.0, 2.0], [1e4, 1.0, 1.0]], np.float32))
except Exception as e:
    print("raised", type(e).__name__)
'''


def test_failed_raise_solve_leaves_no_traceback_at_exit(tmp_path):
    """A sharded solve failing with on_failure="raise" raises to the caller once; at
    exit JAX's own hook used to raise it again ("Exception ignored in atexit")."""
    import os
    import subprocess
    import sys

    script = tmp_path / "fail.py"
    script.write_text(_FAILED_RAISE_SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd(),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "raised" in proc.stdout, proc.stderr[-2000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
