import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import interpolants


ALL = [interpolants.linear(), interpolants.trig(),
       interpolants.linear(gamma_scale=0.5), interpolants.trig(gamma_scale=0.5),
       interpolants.linear(gamma_scale=0.5, gamma_kind="sqrt")]


@pytest.mark.parametrize("interp", ALL, ids=lambda i: i.name)
def test_endpoints(interp):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
    x0, x1, z = (jax.random.normal(k, (5,)) for k in (k0, k1, k2))
    z = z if interp.stochastic else None
    np.testing.assert_allclose(interpolants.interpolate(interp, 0.0, x0, x1, z)[0], x0,
                               atol=1e-6)
    np.testing.assert_allclose(interpolants.interpolate(interp, 1.0, x0, x1, z)[0], x1,
                               atol=1e-6)


@pytest.mark.parametrize("interp", ALL, ids=lambda i: i.name)
@pytest.mark.parametrize("t", [0.1, 0.37, 0.8])
def test_derivative_matches_finite_differences(interp, t, x64):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(1), 3)
    x0, x1, z = (jax.random.normal(k, (4,), jnp.float64) for k in (k0, k1, k2))
    z = z if interp.stochastic else None
    f = lambda s: interpolants.interpolate(interp, s, x0, x1, z)[0]
    eps = 1e-6
    fd = (f(t + eps) - f(t - eps)) / (2 * eps)
    _, dx = interpolants.interpolate(interp, jnp.float64(t), x0, x1, z)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)
    # and against autodiff
    _, jvp = jax.jvp(f, (jnp.float64(t),), (jnp.float64(1.0),))
    np.testing.assert_allclose(dx, jvp, rtol=1e-10)


def test_stochastic_interpolant_requires_noise():
    with pytest.raises(ValueError, match="pass z"):
        interpolants.interpolate(interpolants.linear(gamma_scale=1.0), 0.5,
                                 jnp.zeros(2), jnp.ones(2))


def test_shape_mismatch_and_unknown_name():
    with pytest.raises(ValueError, match="same shape"):
        interpolants.interpolate(interpolants.linear(), 0.5, jnp.zeros(2), jnp.ones(3))
    with pytest.raises(ValueError, match="unknown interpolant"):
        interpolants.get("cubic")
