"""Tests for lfm_jax.ode against closed forms.

Gaussian flow (SPEC section 5): x0 ~ N(0, I), x1 ~ N(m, sigma^2 I), linear interpolant:
mu_t = t m, sigma_t^2 = (1 - t)^2 + t^2 sigma^2,
b_t(x) = mu'_t + (sigma'_t / sigma_t)(x - mu_t),
X_{s,t}(x) = mu_t + (sigma_t / sigma_s)(x - mu_s).
Linear flow b(t, x) = A x with non-symmetric A: X_{0,1} = expm(A), div b = tr A.
"""
import math

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
import pytest

from lfm_jax import ode

D = 3
M = jnp.array([1.0, -2.0, 0.5])
SIGMA = 0.5
A = np.array([[0.2, 1.0, 0.0], [-0.7, -0.3, 0.4], [0.1, -0.5, 0.1]])


def sigma_t(t):
    return jnp.sqrt((1.0 - t) ** 2 + t**2 * SIGMA**2)


def gaussian_velocity(t, x):
    """Exact FM velocity of one example for the Gaussian closed form."""
    s = sigma_t(t)
    ds = (-(1.0 - t) + t * SIGMA**2) / s
    m = M.astype(x.dtype)
    return m + (ds / s) * (x - t * m)


def gaussian_flow_map(s, t, x):
    """X_{s,t}(x) on a batch x of shape (n, D)."""
    m = M.astype(x.dtype)[None, :]
    return t * m + (sigma_t(t) / sigma_t(s)) * (x - s * m)


def gaussian_log_prob(x, mean, std):
    """log N(x; mean, std^2 I) of one example."""
    return jnp.sum(jsp.stats.norm.logpdf(x, mean.astype(x.dtype), std))


def linear_velocity(t, x):
    return jnp.asarray(A, x.dtype) @ x


def nonlinear_velocity(t, x):
    """A smooth field with a non-constant, non-diagonal Jacobian."""
    a = jnp.asarray(A, x.dtype)
    return a @ x + 0.5 * (1.0 + t) * jnp.tanh(a.T @ x)


def points(n, dtype=jnp.float64, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, D), dtype)


def test_integrate_matches_exact_flow_map(x64):
    x = points(6)
    tight = dict(rtol=1e-10, atol=1e-10)
    x1 = ode.integrate(gaussian_velocity, x, 0.0, 1.0, **tight)
    assert x1.shape == x.shape and x1.dtype == jnp.float64
    np.testing.assert_allclose(x1, gaussian_flow_map(0.0, 1.0, x), atol=1e-7)
    np.testing.assert_allclose(
        ode.integrate(gaussian_velocity, x, 0.3, 0.8, solver="dopri5", **tight),
        gaussian_flow_map(0.3, 0.8, x), atol=1e-7,
    )
    # backward in time, and the round trip
    np.testing.assert_allclose(
        ode.integrate(gaussian_velocity, x, 0.8, 0.3, solver="dopri8", **tight),
        gaussian_flow_map(0.8, 0.3, x), atol=1e-7,
    )
    x_back = ode.integrate(gaussian_velocity, x1, 1.0, 0.0, **tight)
    np.testing.assert_allclose(x_back, x, atol=1e-7)
    # save_times: (T, n, D)
    ts = jnp.array([0.1, 0.5, 0.9])
    traj = ode.integrate(gaussian_velocity, x, 0.0, 1.0, save_times=ts, **tight)
    assert traj.shape == (3, 6, D)
    want = jnp.stack([gaussian_flow_map(0.0, t, x) for t in ts])
    np.testing.assert_allclose(traj, want, atol=1e-7)


def _nonlinear_reference(x):
    return ode.integrate(nonlinear_velocity, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_fixed_step_convergence_order(x64, solver, order):
    """Error of X_{0,1} falls like num_steps^-order (halves per doubling for euler).

    euler and heun are checked on the Gaussian closed form; midpoint happens to be
    third-order accurate at t = 1 on that field (error cancellation), so it is checked
    on a nonlinear field against a tight tsit5 reference.
    """
    x = points(6)
    if solver == "midpoint":
        field, exact = nonlinear_velocity, _nonlinear_reference(x)
    else:
        field, exact = gaussian_velocity, gaussian_flow_map(0.0, 1.0, x)
    errors = [
        float(jnp.max(jnp.abs(
            ode.integrate(field, x, solver=solver, num_steps=n) - exact)))
        for n in (16, 32, 64)
    ]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(np.log2(ratios), order, atol=0.25)
    one = ode.integrate(field, x[0], solver=solver, num_steps=16, batched=False)
    np.testing.assert_allclose(
        one, ode.integrate(field, x, solver=solver, num_steps=16)[0], rtol=1e-12)


def test_adaptive_solver_with_num_steps_uses_constant_steps(x64):
    x = points(6)
    exact = gaussian_flow_map(0.0, 1.0, x)
    err = jnp.max(jnp.abs(ode.integrate(gaussian_velocity, x, num_steps=20) - exact))
    assert 1e-12 < err < 1e-5  # fifth order, 20 steps: small but not tolerance-level


def test_integrate_jit_and_grad_through_closure(x64):
    """Jittable with traced times; reverse-mode gradient through a closed-over param."""
    x = points(3)
    a = jnp.asarray(A)

    def loss(theta, t1):
        final = ode.integrate(lambda t, y: theta * (a @ y), x, 0.0, t1,
                              rtol=1e-10, atol=1e-10)
        return jnp.sum(final)

    value, grad = jax.jit(jax.value_and_grad(loss))(1.0, 1.0)
    expm = jsp.linalg.expm(a)
    np.testing.assert_allclose(value, jnp.sum(x @ expm.T), rtol=1e-8)
    # d/dtheta sum(expm(theta A) x) at theta = 1 is sum(A expm(A) x)
    np.testing.assert_allclose(grad, jnp.sum(x @ (a @ expm).T), rtol=1e-6)


def test_log_prob_gaussian_noise_at_zero(x64):
    """Plain FM convention: base N(0, I) at t=0, data N(m, sigma^2 I) at t=1."""
    x = M[None, :] + SIGMA * points(6, seed=1)
    logp, x_base = ode.log_prob(gaussian_velocity, x, ode.standard_normal_log_prob,
                                t_data=1.0, t_base=0.0, rtol=1e-10, atol=1e-10,
                                return_base=True)
    assert logp.shape == (6,)
    want = jax.vmap(lambda xi: gaussian_log_prob(xi, M, SIGMA))(x)
    np.testing.assert_allclose(logp, want, atol=1e-7)
    np.testing.assert_allclose(x_base, gaussian_flow_map(1.0, 0.0, x), atol=1e-7)


def test_log_prob_data_at_zero(x64):
    """LFM convention: data at t=0, base at t=1 (integrate forward to the base)."""
    x = points(6, seed=2)
    tight = dict(t_data=0.0, t_base=1.0, rtol=1e-10, atol=1e-10)
    # Same Gaussian flow: data law N(0, I) at 0, base N(m, sigma^2 I) at 1.
    logp = ode.log_prob(gaussian_velocity, x,
                        lambda y: gaussian_log_prob(y, M, SIGMA), **tight)
    np.testing.assert_allclose(logp, jax.vmap(ode.standard_normal_log_prob)(x),
                               atol=1e-7)
    # Time-reversed flow: data N(m, sigma^2 I) at 0 carried to noise N(0, I) at 1.
    reversed_velocity = lambda t, y: -gaussian_velocity(1.0 - t, y)  # noqa: E731
    y = M[None, :] + SIGMA * x
    logp = ode.log_prob(reversed_velocity, y, ode.standard_normal_log_prob, **tight)
    want = jax.vmap(lambda yi: gaussian_log_prob(yi, M, SIGMA))(y)
    np.testing.assert_allclose(logp, want, atol=1e-7)


def test_exact_divergence_non_symmetric_linear_flow(x64):
    a = jnp.asarray(A)
    x = points(6, seed=3)
    divs = jax.vmap(lambda xi: ode.divergence(linear_velocity, 0.5, xi))(x)
    np.testing.assert_allclose(divs, jnp.trace(a), rtol=1e-12)
    # non-1D example: b(t, x) = vec^{-1}(K vec x) on (2, 3) examples, div = tr K
    k = jax.random.normal(jax.random.key(4), (6, 6), jnp.float64)
    b_mat = lambda t, y: (k @ y.reshape(-1)).reshape(y.shape)  # noqa: E731
    np.testing.assert_allclose(
        ode.divergence(b_mat, 0.0, x[0, :2].reshape(1, 2).repeat(3, 0).reshape(2, 3)),
        jnp.trace(k), rtol=1e-12)
    # pushforward of N(0, I) by expm(A): N(0, E E^T), log-det = tr A
    e = jsp.linalg.expm(a)
    y = x @ e.T
    np.testing.assert_allclose(ode.integrate(linear_velocity, x, rtol=1e-10,
                                             atol=1e-10), y, atol=1e-7)
    logp = ode.log_prob(linear_velocity, y, ode.standard_normal_log_prob,
                        rtol=1e-10, atol=1e-10)
    want = jax.vmap(lambda yi: jsp.stats.multivariate_normal.logpdf(
        yi, jnp.zeros(D), e @ e.T))(y)
    np.testing.assert_allclose(logp, want, atol=1e-7)
    np.testing.assert_allclose(
        logp, jax.vmap(ode.standard_normal_log_prob)(x) - jnp.trace(a), atol=1e-7)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_unbiased(probe):
    x = points(1, jnp.float32)[0]
    exact = ode.divergence(nonlinear_velocity, 0.3, x)
    est = ode.divergence(nonlinear_velocity, 0.3, x, key=jax.random.key(0),
                         method="hutchinson", n_probes=4000, probe=probe)
    single = jax.vmap(lambda k: ode.divergence(
        nonlinear_velocity, 0.3, x, key=k, method="hutchinson", probe=probe))(
        jax.random.split(jax.random.key(1), 4000))
    se = jnp.std(single) / math.sqrt(4000)
    assert jnp.std(single) > 1e-2
    assert abs(est - exact) < 4 * se
    assert abs(jnp.mean(single) - exact) < 4 * se


def test_hutchinson_log_prob_unbiased(x64):
    p = points(2, seed=5)
    x = jnp.stack([p[0], p[0], p[1]])  # a repeated point: its probes must differ
    kw = dict(rtol=1e-7, atol=1e-7)
    exact = ode.log_prob(nonlinear_velocity, x, ode.standard_normal_log_prob, **kw)
    n_keys = 256
    estimates = jax.jit(jax.vmap(lambda k: ode.log_prob(
        nonlinear_velocity, x, ode.standard_normal_log_prob, method="hutchinson",
        key=k, **kw)))(jax.random.split(jax.random.key(6), n_keys))
    assert estimates.shape == (n_keys, 3)
    spread = jnp.std(estimates, axis=0)
    assert jnp.all(spread > 1e-3)  # genuinely stochastic
    se = spread / math.sqrt(n_keys)
    assert jnp.all(jnp.abs(jnp.mean(estimates, axis=0) - exact) < 4 * se)
    assert jnp.any(estimates[:, 0] != estimates[:, 1])  # per-example probes


def test_unknown_names_and_missing_arguments_raise():
    x = points(2, jnp.float32)
    with pytest.raises(ValueError, match="tsit5"):
        ode.integrate(linear_velocity, x, solver="rk4")
    with pytest.raises(ValueError, match="num_steps"):
        ode.integrate(linear_velocity, x, solver="euler")
    with pytest.raises(ValueError, match="exact"):
        ode.log_prob(linear_velocity, x, ode.standard_normal_log_prob, method="trace")
    with pytest.raises(ValueError, match="key"):
        ode.log_prob(linear_velocity, x, ode.standard_normal_log_prob,
                     method="hutchinson")
    with pytest.raises(ValueError, match="dopri5"):
        ode.log_prob(linear_velocity, x, ode.standard_normal_log_prob, solver="x")


def test_max_steps_exceeded_raises():
    x = points(2, jnp.float32)
    with pytest.raises(Exception, match="(?i)max"):
        jax.block_until_ready(
            ode.integrate(nonlinear_velocity, x, rtol=1e-8, atol=1e-8, max_steps=2))


def test_chunked_equals_unchunked():
    """7 examples in chunks of 3 (the last one padded) give the unchunked results."""
    x = points(7, jnp.float32, seed=8)
    steps = dict(solver="heun", num_steps=8)
    full = ode.integrate(nonlinear_velocity, x, 0.0, 1.0, **steps)
    ts = jnp.array([0.5, 1.0])
    traj = ode.integrate_chunked(nonlinear_velocity, x, 3, save_times=ts, **steps)
    assert traj.shape == (2, 7, D)
    np.testing.assert_allclose(traj[-1], full, rtol=1e-6, atol=1e-6)
    kw = dict(method="hutchinson", key=jax.random.key(9), n_probes=2)
    lp = ode.log_prob(nonlinear_velocity, x, ode.standard_normal_log_prob, **kw)
    lp_chunked, base = ode.log_prob_chunked(
        nonlinear_velocity, x, ode.standard_normal_log_prob, 3, return_base=True, **kw)
    assert base.shape == x.shape
    np.testing.assert_allclose(lp_chunked, lp, rtol=1e-5, atol=1e-5)


def test_integrate_traces_once_per_velocity():
    """diffrax's compiled solve is reused for the same b and new x, t0, t1."""
    traces = [0]

    def b(t, x):
        traces[0] += 1
        return linear_velocity(t, x)

    x = points(3, jnp.float32, seed=11)
    y = ode.integrate(b, x, 0.0, 1.0)
    first = traces[0]
    x_back = ode.integrate(b, y, 1.0, 0.0)
    ode.integrate(b, 2.0 * x, 0.2, 0.7)
    assert traces[0] == first
    np.testing.assert_allclose(x_back, x, atol=1e-4)
