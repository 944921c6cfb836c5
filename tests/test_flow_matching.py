"""Flow matching: the minimiser on Gaussian endpoints is the closed form of
docs/maths.md section 5; the loss factory with its pair samplers and times per pair;
the FM test NLL does not depend on how the rows are chunked or sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import couplings, flow_matching, interpolants, losses, networks, ode, time_sampling

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


def _scaled_velocity(p, t, x):
    return p * t * x


@pytest.mark.parametrize("k", [1, 3])
def test_make_loss_times_per_pair_matches_direct_computation(x64, k):
    """loss = (1/B) sum_i (1/k) sum_j |b(t_ij, I_ij) - (x1_i - x0_i)|^2 with the pairs
    from the pair sampler and B * k times from the time sampler."""
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    loss_fn = flow_matching.make_loss(_scaled_velocity, interpolants.linear(),
                                      time_sampling.get("uniform"),
                                      lambda key, batch: batch, times_per_pair=k)
    key = jax.random.PRNGKey(7)
    loss, _ = loss_fn(0.7, key, (jnp.asarray(x0), jnp.asarray(x1)))
    t = np.asarray(jax.random.uniform(jax.random.split(key)[1], (5 * k,))).reshape(5, k)
    direct = 0.0
    for i in range(5):
        for j in range(k):
            x_t = (1 - t[i, j]) * x0[i] + t[i, j] * x1[i]
            direct += np.sum((0.7 * t[i, j] * x_t - (x1[i] - x0[i])) ** 2) / (5 * k)
    np.testing.assert_allclose(loss, direct, rtol=1e-12)
    with pytest.raises(ValueError, match="times_per_pair"):
        flow_matching.make_loss(_scaled_velocity, interpolants.linear(),
                                time_sampling.get("uniform"), times_per_pair=0)


def test_gaussian_pairs_draw_standard_normal_noise_and_keep_data():
    x1 = jnp.arange(4000.0).reshape(2000, 2)
    x0, x1_out = flow_matching.gaussian_pairs()(jax.random.PRNGKey(0), x1)
    np.testing.assert_array_equal(x1_out, x1)
    assert x0.shape == x1.shape
    assert abs(float(jnp.mean(x0))) < 0.1 and abs(float(jnp.std(x0)) - 1) < 0.05


def test_fm_hutchinson_nll_same_for_any_chunking_and_device_count():
    """Probes are keyed by the global test row, so chunk size and device count do not
    change the FM test log-likelihoods (they did when keyed by the chunk's first row)."""
    from lfm_jax import distributed
    from lfm_jax.runs import flow_matching as fm_run

    d = 4
    net = networks.velocity_mlp((d,), hidden=(16,))
    params = net.init(jax.random.PRNGKey(0))
    x = np.repeat(np.linspace(-1, 1, d, dtype=np.float32)[None], 12, axis=0)  # copies
    opts = ode.Options(rtol=1e-5, atol=1e-5)
    out = [fm_run.log_prob_rows(net, params, x, jax.random.PRNGKey(1), options=opts,
                                divergence="hutchinson", chunk_size=chunk,
                                mesh=distributed.make_mesh(ndev))
           for ndev, chunk in ((2, 2), (1, 5))]  # other chunk size and device count
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-5)
    assert len(np.unique(np.round(out[0], 5))) > 6  # each copy has its own probes
