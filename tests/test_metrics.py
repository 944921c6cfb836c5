"""Tests for lfm_jax.metrics against closed forms."""
import math

import jax
import jax.numpy as jnp
import pytest

from lfm_jax import data, metrics


def _normal(seed, n, d, shift=0.0):
    z = jax.random.normal(jax.random.PRNGKey(seed), (n, d))
    return z + shift * jnp.eye(d)[:1]


@pytest.mark.parametrize("distance", [metrics.energy_distance, metrics.mmd])
def test_two_sample_distances(distance):
    n = 1500
    x = _normal(0, n, 2)
    same = float(distance(x, _normal(1, n, 2)))
    values = [float(distance(x, _normal(1, n, 2, s))) for s in (0.25, 0.5, 1.0, 2.0)]
    assert abs(same) < 0.2 * values[0]
    assert all(v > 0 for v in values)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_energy_distance_closed_form_and_chunks():
    # 1-D, X ~ N(0,1), Y ~ N(m,1): 2E|X-Y| - E|X-X'| - E|Y-Y'| with
    # E|N(m, 2)| = 2 phi(m / sqrt2) sqrt2 + m (2 Phi(m / sqrt2) - 1).
    from scipy.stats import norm
    m = 1.0
    s = math.sqrt(2.0)
    exy = 2 * s * norm.pdf(m / s) + m * (2 * norm.cdf(m / s) - 1)
    exact = 2 * exy - 2 * 2 * s * norm.pdf(0.0)
    x, y = _normal(2, 3000, 1), _normal(3, 3000, 1, m)
    est = float(metrics.energy_distance(x, y))
    assert est == pytest.approx(exact, abs=0.06)  # ~3 standard errors
    chunked = float(metrics.energy_distance(x, y, chunk_size=256))
    assert chunked == pytest.approx(est, rel=1e-4)
    small = float(metrics.mmd(x, y, chunk_size=700))
    assert small == pytest.approx(float(metrics.mmd(x, y)), rel=1e-4)


@pytest.mark.parametrize("m", [0.5, 2.0])
def test_sliced_wasserstein_gaussian_shift(m):
    key = jax.random.PRNGKey(4)
    # 1-D: SW2 = W2 = |m|.
    x1, y1 = _normal(5, 4000, 1), _normal(6, 4000, 1, m)
    assert float(metrics.sliced_wasserstein(key, x1, y1)) == pytest.approx(m, abs=0.07)
    # 1-D law embedded in 2-D along e1: SW2^2 = m^2 E[theta_1^2] = m^2 / 2.
    x2 = jnp.concatenate([x1, jnp.zeros_like(x1)], axis=1)
    y2 = jnp.concatenate([y1, jnp.zeros_like(y1)], axis=1)
    sw = float(metrics.sliced_wasserstein(key, x2, y2, n_projections=512))
    assert sw == pytest.approx(m / math.sqrt(2.0), abs=0.07)


def test_sliced_wasserstein_matches_sorted_projections_and_unequal_sizes():
    key = jax.random.PRNGKey(7)
    x, y = _normal(8, 300, 3), _normal(9, 300, 3, 1.0)
    theta = jax.random.normal(key, (64, 3))
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    px, py = jnp.sort(x @ theta.T, axis=0), jnp.sort(y @ theta.T, axis=0)
    for p in (2, 3):
        ref = float(jnp.mean(jnp.abs(px - py) ** p)) ** (1.0 / p)
        sw = float(metrics.sliced_wasserstein(key, x, y, n_projections=64, p=p))
        assert sw == pytest.approx(ref, rel=1e-4)
    # 1-D, y repeated twice: the same empirical law, so the distance does not change.
    x1, y1 = _normal(10, 200, 1), _normal(11, 200, 1, 0.5)
    twice = jnp.concatenate([y1, y1], axis=0)
    assert float(metrics.sliced_wasserstein(key, x1, twice)) == pytest.approx(
        float(metrics.sliced_wasserstein(key, x1, y1)), rel=1e-4)

def test_nll_of_gaussian_equals_entropy():
    d, sigma = 3, 1.5
    gm = data.GaussianMixture(jnp.zeros((1, d)), jnp.full((1,), sigma), jnp.ones(1))
    x = gm.sample(jax.random.PRNGKey(0), 20_000)
    mean, se = metrics.nll(gm.log_prob, x, batch_size=3000)
    exact = 0.5 * d * (1.0 + math.log(2 * math.pi)) + d * math.log(sigma)
    assert abs(float(mean) - exact) < 4 * float(se)
    assert float(metrics.bits_per_dim(mean, d)) == pytest.approx(float(mean) / (d * math.log(2)))


def test_entropy_floor():
    cb = data.make_dataset("checkerboard", 100, 10, 10)
    assert metrics.entropy_floor(cb) == pytest.approx(3.676, abs=1e-3)
    assert metrics.entropy_floor(data.make_dataset("moons", 10, 10, 10)) is None
    ds = data.make_dataset("gmm", 4000, 1000, 1000, dim=2, n_components=1)
    assert math.isfinite(metrics.entropy_floor(ds))


def test_biased_energy_distance_is_non_negative_v_statistic():
    """Same law: the unbiased estimate can be < 0; the biased one is the V-statistic
    (self-pairs in the within-sample means), never negative, and equals the unbiased
    one plus E|X-X'|/n + E|Y-Y'|/m (within-sample means over i != j)."""
    import numpy as np

    for seed in range(4):
        x, y = _normal(10 + seed, 40, 2), _normal(20 + seed, 50, 2)
        u = float(metrics.energy_distance(x, y))
        b = float(metrics.energy_distance(x, y, biased=True))
        assert b >= 0
        xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
        exx = np.linalg.norm(xn[:, None] - xn[None], axis=-1).sum() / (40 * 39)
        eyy = np.linalg.norm(yn[:, None] - yn[None], axis=-1).sum() / (50 * 49)
        assert b == pytest.approx(u + exx / 40 + eyy / 50, rel=1e-4, abs=1e-5)
