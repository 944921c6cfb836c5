"""Tests for lfm_jax.time_sampling: laws of t against closed forms."""
import jax
import numpy as np
import pytest
from scipy import stats

from lfm_jax import time_sampling

N = 200_000


@pytest.mark.parametrize("a,b", [(1.0, 0.5), (2.0, 5.0), (1.0, 1.0)])
def test_beta_mean_variance_and_law(a, b):
    t = np.asarray(time_sampling.get("beta", a=a, b=b)(jax.random.PRNGKey(0), N), np.float64)
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1.0))
    assert t.shape == (N,) and t.min() >= 0.0 and t.max() <= 1.0
    assert abs(t.mean() - mean) < 5 * np.sqrt(var / N)
    assert abs(t.var() - var) < 0.01 * var + 5e-4
    # Kolmogorov-Smirnov against scipy's Beta(a, b): a is the exponent at t = 0
    assert stats.kstest(t[:20_000], stats.beta(a, b).cdf).pvalue > 1e-3


def test_beta_one_half_leans_to_noise_end():
    """Beta(1, 0.5) (official GAS): P(t > 1/2) = (1 - 1/2)^0.5 = 1/sqrt(2)."""
    t = np.asarray(time_sampling.beta(jax.random.PRNGKey(1), N, 1.0, 0.5))
    # CDF of Beta(1, b) is 1 - (1 - t)^b
    assert abs((t > 0.5).mean() - 0.5 ** 0.5) < 0.005


def test_uniform_range_and_moments():
    t = np.asarray(time_sampling.get("uniform", eps=0.1)(jax.random.PRNGKey(2), N))
    assert t.min() >= 0.1 and t.max() <= 0.9
    assert abs(t.mean() - 0.5) < 0.005 and abs(t.var() - 0.8 ** 2 / 12) < 0.002


def test_per_pair_shape_and_independence():
    sample = time_sampling.per_pair(time_sampling.get("uniform"), 4)
    key = jax.random.PRNGKey(3)
    t = np.asarray(sample(key, 50_000))
    assert t.shape == (50_000, 4)
    np.testing.assert_array_equal(t.reshape(-1), np.asarray(time_sampling.uniform(key, 200_000)))
    corr = np.corrcoef(t, rowvar=False)
    assert np.max(np.abs(corr - np.eye(4))) < 0.03
    one = time_sampling.per_pair(time_sampling.uniform, 1)(key, 10)
    np.testing.assert_array_equal(np.asarray(one)[:, 0], np.asarray(time_sampling.uniform(key, 10)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown time sampler"):
        time_sampling.get("logit_normal")
    with pytest.raises(ValueError, match="a > 0"):
        time_sampling.get("beta", a=0.0, b=1.0)
    with pytest.raises(ValueError, match="eps"):
        time_sampling.get("uniform", eps=0.6)
    with pytest.raises(ValueError, match=">= 1"):
        time_sampling.per_pair(time_sampling.uniform, 0)
