"""Tests for lfm_jax.data: samplers, exact densities, validation and loading."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lfm_jax import data, distributed


@pytest.mark.parametrize("name", sorted(data.TOY_2D))
def test_toy_shape_dtype_determinism(name):
    key = jax.random.PRNGKey(0)
    a = data.sample_toy(name, key, 500)
    b = data.sample_toy(name, key, 500)
    c = data.sample_toy(name, jax.random.PRNGKey(1), 500)
    assert a.shape == (500, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    assert np.all(np.isfinite(np.asarray(a)))


def test_unknown_toy_lists_names():
    with pytest.raises(ValueError, match="checkerboard"):
        data.sample_toy("nope", jax.random.PRNGKey(0), 10)


def test_checkerboard_support_and_entropy():
    assert data.checkerboard_entropy() == pytest.approx(3.676, abs=1e-3)
    assert data.checkerboard_entropy(2.0) == pytest.approx(math.log(32.0))
    x = data.sample_checkerboard(jax.random.PRNGKey(0), 20_000)
    log_p = data.log_density_checkerboard(x)
    assert np.all(np.isfinite(np.asarray(log_p)))
    assert float(-jnp.mean(log_p)) == pytest.approx(3.676, abs=1e-3)  # constant on support
    # The density integrates to 1 over a grid covering twice the board's side.
    half = 4.0 / 0.45
    g = ((np.arange(400) + 0.5) / 400 * 2.0 - 1.0) * half
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    cell = (2.0 * half / 400) ** 2
    mass = float(jnp.sum(jnp.exp(data.log_density_checkerboard(jnp.asarray(grid))))) * cell
    assert mass == pytest.approx(1.0, rel=1e-2)
    # All 8 filled squares are visited about equally.
    u = np.floor(np.asarray(x) * 0.45).astype(int)
    _, counts = np.unique(u, axis=0, return_counts=True)
    assert counts.size == 8 and counts.min() > 0.8 * 20_000 / 8


def test_gmm_single_component_matches_scipy(x64):
    mean = np.array([0.5, -1.0, 2.0])
    std = np.array([0.5, 1.0, 2.0])
    gm = data.GaussianMixture(jnp.asarray(mean[None]), jnp.asarray(std[None]), jnp.ones(1))
    x = np.random.default_rng(0).normal(size=(5, 3))
    ours = np.asarray(jax.vmap(gm.log_prob)(jnp.asarray(x)))
    ref = stats.multivariate_normal(mean, np.diag(std**2)).logpdf(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_gmm_mixture_matches_scipy(x64):
    gm = data.make_gaussian_mixture(3, dim=4, n_components=3, diagonal=True)
    x = np.asarray(gm.sample(jax.random.PRNGKey(0), 6))
    ref = np.log(sum(
        float(gm.weights[k]) * stats.multivariate_normal(
            np.asarray(gm.means[k]), np.diag(np.asarray(gm.stds[k]) ** 2)).pdf(x)
        for k in range(3)))
    np.testing.assert_allclose(np.asarray(jax.vmap(gm.log_prob)(x)), ref, rtol=1e-6)


def test_gmm_sample_moments_and_entropy():
    gm = data.make_gaussian_mixture(0, dim=6, n_components=4)
    x = np.asarray(gm.sample(jax.random.PRNGKey(1), 50_000), dtype=np.float64)
    w = np.asarray(gm.weights, dtype=np.float64)
    mu = np.asarray(gm.means, dtype=np.float64)
    s2 = np.asarray(gm.stds, dtype=np.float64) ** 2
    mean = w @ mu
    cov = (mu - mean).T @ (w[:, None] * (mu - mean)) + np.eye(6) * (w @ s2)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.05)
    # Single isotropic Gaussian: the MC entropy matches the closed form.
    g = data.GaussianMixture(jnp.zeros((1, 5)), jnp.full((1,), 0.7), jnp.ones(1))
    h, se = g.entropy_mc(jax.random.PRNGKey(2), 50_000)
    exact = 0.5 * 5 * (1.0 + math.log(2 * math.pi)) + 5 * math.log(0.7)
    assert abs(float(h) - exact) < 4 * float(se) + 1e-4


def test_gmm_reproducible_any_dim():
    for dim in (6, 43):
        a = data.make_gaussian_mixture(7, dim, 5)
        b = data.make_gaussian_mixture(jax.random.PRNGKey(7), dim, 5)
        np.testing.assert_array_equal(np.asarray(a.means), np.asarray(b.means))
        assert a.means.shape == (5, dim) and a.dim == dim


def test_make_dataset_splits():
    ds = data.make_dataset("gmm", 300, 200, 100, seed=0, dim=8, n_components=3)
    assert ds.train.shape == (300, 8) and ds.val.shape == (200, 8) and ds.test.shape == (100, 8)
    assert isinstance(ds.train, np.ndarray) and ds.train.dtype == np.float32
    assert not np.allclose(ds.train[:100], ds.test)
    assert np.isfinite(float(ds.log_prob(jnp.asarray(ds.test[0]))))
    ds2 = data.make_dataset("gmm", 300, 200, 100, seed=0, dim=8, n_components=3)
    np.testing.assert_array_equal(ds.test, ds2.test)
    cb = data.make_dataset("checkerboard", 100, 10, 10)
    assert cb.dim == 2 and cb.entropy == pytest.approx(3.676, abs=1e-3)
    assert data.make_dataset("moons", 10, 10, 10).log_prob is None
    with pytest.raises(ValueError, match="unknown"):
        data.make_dataset("mnist", 10, 10, 10)


def test_validate_errors():
    good = np.zeros((4, 3))
    assert data.validate(good).dtype == np.float64
    assert data.validate(jnp.zeros((4, 3), jnp.float32), dim=3).dtype == np.float32
    assert data.validate(np.zeros((4, 3), np.int32)).dtype == np.float32
    bad = np.zeros((5, 3))
    bad[2, 1] = np.nan
    bad[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"row 2, column 1 is nan .*NaN or Inf in 2 of 5 rows"):
        data.validate(bad)
    with pytest.raises(ValueError, match="2-D"):
        data.validate(np.zeros(5))
    with pytest.raises(ValueError, match="rank 3"):
        data.validate(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="wrong number of columns, expected dim 2, got 3"):
        data.validate(good, dim=2)
    with pytest.raises(ValueError, match="empty"):
        data.validate(np.zeros((0, 3)))


def test_load_array(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        data.load_array(missing)
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", data=x)
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", header="a,b,c", comments="")
    np.testing.assert_array_equal(data.load_array(tmp_path / "a.npy", dim=3), x)
    np.testing.assert_array_equal(data.load_array(tmp_path / "b.npz"), x)
    np.testing.assert_allclose(data.load_array(tmp_path / "c.csv"), x, rtol=1e-6)
    bad = x.copy()
    bad[3, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="bad.npy: row 3, column 0 is nan"):
        data.load_array(tmp_path / "bad.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.csv").write_bytes(b"")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    for name, match in [("junk.npy", "not a readable .npy file"),
                        ("empty.npz", "not a readable .npz file"),
                        ("empty.csv", "file is empty"), ("flat.npy", "expected a 2-D array"),
                        ("ragged.csv", "number of columns changed")]:
        with pytest.raises(ValueError, match=match) as err:
            data.load_array(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)), err.value


def test_sample_batch_deterministic_and_jittable():
    x = jnp.arange(40.0).reshape(20, 2)
    f = jax.jit(data.sample_batch, static_argnames="batch_size")
    base = jax.random.PRNGKey(0)
    a = f(jax.random.fold_in(base, 5), x, batch_size=8)
    b = data.sample_batch(jax.random.fold_in(base, 5), x, 8)
    c = f(jax.random.fold_in(base, 6), x, batch_size=8)
    assert a.shape == (8, 2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.all(np.asarray(a)[:, 1] == np.asarray(a)[:, 0] + 1)


# ------------------------------------------------ official image densities (rose, tree)


@pytest.mark.parametrize("name", ["rose", "tree"])
def test_image_density_samples_match_the_mixture(name):
    mix = data.official_image_density(name)
    x = np.asarray(data.sample_toy(name, jax.random.PRNGKey(0), 40_000), np.float64)
    assert x.shape == (40_000, 2) and np.all(np.isfinite(x))
    # support: the square [-4, 4]^2 up to a few pixel-widths of Gaussian jitter
    assert np.all(np.abs(x) < data.IMAGE_EXTENT + 0.2)
    w = np.asarray(mix.weights, np.float64)
    mu = np.asarray(mix.means, np.float64)
    mean = w @ mu
    sd = np.sqrt(w @ (mu - mean) ** 2 + np.mean(np.asarray(mix.stds, np.float64) ** 2, 0))
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * sd / np.sqrt(len(x)))
    lp = np.asarray(jax.vmap(mix.log_prob)(jnp.asarray(x[:200], jnp.float32)))
    assert np.all(np.isfinite(lp))


def test_tree_is_upright_with_trunk_at_bottom_centre():
    x = np.asarray(data.sample_toy("tree", jax.random.PRNGKey(1), 20_000))
    low = x[x[:, 1] < -2.5]
    assert len(low) > 200 and np.all(np.abs(low[:, 0]) < 0.5)   # the trunk
    assert np.mean(x[:, 1] > 0) > 0.75                           # the crown is on top


def test_rose_bloom_on_top_and_density_orientation():
    mix = data.official_image_density("rose")
    x = np.asarray(data.sample_toy("rose", jax.random.PRNGKey(2), 20_000))
    assert np.mean(x[:, 1] > 0) > 0.5
    # a pixel of the picture (row 0 = top) at weight 255 - 0 is a mode of the density
    gray = data.load_grayscale(data.ASSETS / "rose.png")
    r, c = np.argwhere(gray == gray.min())[0]
    h, w = gray.shape
    dark = jnp.array([-4.0 + 8.0 * c / (w - 1), 4.0 - 8.0 * r / (h - 1)], jnp.float32)
    assert float(mix.log_prob(dark)) > float(mix.log_prob(jnp.array([3.9, -3.9]))) + 5.0


def test_image_density_from_array_layout():
    """A 3 x 2 image with one dark pixel at the top right: all mass near (4, 4)."""
    gray = np.full((3, 2), 255.0)
    gray[0, 1] = 0.0
    mix = data.image_density(gray)
    np.testing.assert_allclose(np.asarray(mix.means), [[4.0, 4.0]])
    np.testing.assert_allclose(np.asarray(mix.stds), [[4.0 / 2, 4.0 / 3]])
    with pytest.raises(ValueError, match="no dark pixel"):
        data.image_density(np.ones((4, 4)))
    with pytest.raises(ValueError, match="2-D grayscale"):
        data.image_density(np.ones((4,)))
    with pytest.raises(ValueError, match="rose, tree"):
        data.official_image_density("tulip")


def test_make_dataset_rose_has_log_prob():
    ds = data.make_dataset("rose", n_train=1000, n_val=100, n_test=100)
    assert ds.train.shape == (1000, 2) and ds.log_prob is not None
    assert np.isfinite(float(ds.log_prob(jnp.asarray(ds.test[0]))))
@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 50])
def test_map_in_chunks_equals_one_call(chunk):
    """The one pad-and-chunk mapper: any chunk size (padded last chunk included) gives
    the unchunked result on a pytree, and the padding repeats the last row."""
    x = jnp.arange(14.0).reshape(7, 2)
    idx = jnp.arange(7)
    fn = lambda t: {"s": jnp.sum(t[0] ** 2, axis=1), "i": t[1] * 2}  # noqa: E731
    out = jax.jit(lambda a, b: distributed.map_in_chunks(fn, (a, b), chunk))(x, idx)
    np.testing.assert_array_equal(out["s"], np.sum(np.asarray(x) ** 2, axis=1))
    np.testing.assert_array_equal(out["i"], 2 * np.arange(7))
    padded, n = distributed.pad_rows(np.asarray(x), 4)
    assert n == 7 and isinstance(padded, np.ndarray) and padded.shape == (8, 2)
    np.testing.assert_array_equal(padded[-1], padded[-2])
