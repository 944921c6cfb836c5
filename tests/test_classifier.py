"""Classifier for evaluation and the Fréchet distance in its features (not Inception FID)."""
import jax
import numpy as np
import pytest
import scipy.linalg

from lfm_jax import classifier, images

KEY = jax.random.PRNGKey(0)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=4), _random_cov(rng, 4)
    assert classifier.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    d = classifier.frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]])
    assert d == pytest.approx(1.5 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)
    # commuting (diagonal) covariances: |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2
    a, b = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert classifier.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(
        expected, rel=1e-10)
    # general covariances: the textbook formula with scipy's sqrtm of C1 C2
    c1, c2 = _random_cov(rng, 6), _random_cov(rng, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    ref = (np.sum((m1 - m2) ** 2) + np.trace(c1 + c2)
           - 2.0 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)
    d12 = classifier.frechet_distance(m1, c1, m2, c2)
    assert d12 == pytest.approx(ref, rel=1e-8)
    assert classifier.frechet_distance(m2, c2, m1, c1) == pytest.approx(d12, rel=1e-8)
    with pytest.raises(ValueError, match="shapes do not match"):
        classifier.frechet_distance(m1, c1, m2[:3], c2[:3, :3])


def test_feature_statistics_recover_gaussian_distance():
    rng = np.random.default_rng(1)
    c1, c2 = np.diag([1.0, 0.5]), np.diag([0.25, 2.0])
    f1 = rng.multivariate_normal([0.0, 0.0], c1, size=40_000)
    f2 = rng.multivariate_normal([1.0, 0.0], c2, size=40_000)
    d = classifier.frechet_distance(*classifier.feature_statistics(f1),
                                    *classifier.feature_statistics(f2))
    exact = 1.0 + (1.0 - 0.5) ** 2 + (np.sqrt(0.5) - np.sqrt(2.0)) ** 2
    assert d == pytest.approx(exact, abs=0.05)


@pytest.mark.slow  # trains a CNN for ~13 s; the Frechet distance has closed-form tests
def test_classifier_learns_digits_and_reports_fd_classifier():
    x, y = images.load_digits()
    ds = images.split_images(x, y, n_val=300, seed=0, name="digits")
    clf = classifier.make_classifier((8, 8, 1), 10, channels=(8, 16), features=32)
    params = classifier.train_classifier(clf, ds.train, ds.train_labels, key=KEY, steps=150,
                                         batch_size=64, learning_rate=3e-3)
    x_val = images.to_centered(ds.val)
    acc = classifier.accuracy(clf, params, x_val, ds.val_labels)
    assert acc > 0.8, acc
    f = classifier.features(clf, params, x_val)
    assert f.shape == (300, 32)
    same = classifier.fd_classifier(clf, params, x_val, x_val)
    assert same[classifier.METRIC] == pytest.approx(0.0, abs=1e-6)
    assert "NOT Inception FID" in same["note"] and "fid" not in same
    noise = np.random.default_rng(0).uniform(-1, 1, x_val.shape).astype(np.float32)
    assert classifier.fd_classifier(clf, params, x_val, noise)[classifier.METRIC] > 1.0
    with pytest.raises(ValueError, match="labels must be"):
        classifier.train_classifier(clf, ds.train, ds.train_labels + 10, key=KEY, steps=1)
