"""The flow-matching minimiser on Gaussian endpoints is the closed form of SPEC 5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import couplings, interpolants, losses

M = jnp.array([1.5, -0.5, 2.0])
SIGMA = 0.4


def exact_velocity(t, x, m=M, sigma=SIGMA):
    """b_t(x) = mu'_t + (sigma'_t / sigma_t)(x - mu_t) for the linear interpolant."""
    mu, dmu = t * m, m
    var = (1 - t) ** 2 + t**2 * sigma**2
    dvar_half = -(1 - t) + t * sigma**2  # sigma_t sigma'_t
    return dmu + dvar_half / var * (x - mu)


def expected_loss(b, key, n=200_000):
    """Monte-Carlo E|b(t, I_t) - dI_t|^2 with fixed random numbers (common across b)."""
    k0, k1, kt = jax.random.split(key, 3)
    x0 = jax.random.normal(k0, (n, 3))
    x1 = M[None, :] + SIGMA * jax.random.normal(k1, (n, 3))
    t = jax.random.uniform(kt, (n,))
    f = jax.vmap(lambda t_, a, c: losses.flow_matching(b, interpolants.linear(), t_, a, c))
    return jnp.mean(f(t, x0, x1))


def test_closed_form_is_the_minimiser():
    key = jax.random.PRNGKey(0)

    def perturbed(theta):
        d_shift, d_scale = theta
        return lambda t, x: exact_velocity(t, x) + d_shift + d_scale * (x - t * M)

    loss_at = lambda theta: expected_loss(perturbed(theta), key)
    base = loss_at(jnp.zeros(2))
    for theta in ([0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [0.0, -0.1], [0.05, 0.05]):
        assert loss_at(jnp.array(theta)) > base + 1e-3
    # stationarity: the gradient in the affine perturbation directions vanishes
    grad = jax.grad(loss_at)(jnp.zeros(2))
    assert jnp.all(jnp.abs(grad) < 0.02), grad
    # and the minimal loss equals the conditional variance E|dI - b(I)|^2 > 0
    assert base > 0.1


def test_loss_is_per_example_and_vmaps():
    b = lambda t, x: jnp.zeros_like(x)
    out = jax.vmap(lambda t, a, c: losses.flow_matching(b, interpolants.trig(), t, a, c))(
        jnp.full((4,), 0.3), jnp.ones((4, 2)), jnp.zeros((4, 2)))
    assert out.shape == (4,)
    h = jnp.pi / 2
    expected = 2 * (h * jnp.sin(h * 0.3)) ** 2
    np.testing.assert_allclose(out, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["ot_exact", "ot_sinkhorn"])
def test_ot_coupling_lowers_transport_cost(name):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(3), 3)
    x0 = jax.random.normal(k0, (64, 2))
    x1 = jax.random.normal(k1, (64, 2)) * 0.5 + 3.0
    a, b = jax.jit(couplings.get(name))(k2, x0, x1)
    cost = lambda p, q: float(jnp.mean(jnp.sum((p - q) ** 2, -1)))
    assert cost(a, b) < 0.95 * cost(x0, x1)
    if name == "ot_exact":  # a permutation: marginals kept exactly
        np.testing.assert_allclose(np.sort(np.asarray(b[:, 0])), np.sort(np.asarray(x1[:, 0])))


def test_unknown_coupling():
    with pytest.raises(ValueError, match="unknown coupling"):
        couplings.get("sinkhorn2")
