"""Tests for lfm_jax.plots: each function writes a non-empty PNG."""
import jax
import numpy as np
import pytest

from lfm_jax import plots

PNG_MAGIC = b"\x89PNG"


def _check(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:4] == PNG_MAGIC


def test_plot_samples_2d_and_high_dim(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    _check(plots.plot_samples(tmp_path / "a" / "s2.png", x, data=x + 1, title="2d", bins=30))
    _check(plots.plot_samples(tmp_path / "s2_nodata.png", jax.numpy.asarray(x)))
    y = rng.normal(size=(300, 6))
    _check(plots.plot_samples(tmp_path / "s6.png", y, data=y * 2))


def test_plot_trajectories(tmp_path):
    trajs = np.cumsum(np.random.default_rng(1).normal(size=(10, 50, 2)), axis=0)
    _check(plots.plot_trajectories(tmp_path / "t.png", trajs))


def test_plot_loss_and_curves(tmp_path):
    steps = np.arange(100)
    _check(plots.plot_loss(tmp_path / "loss.png", steps, np.exp(-steps / 30.0) + 0.01))
    curves = {"lfm": ([1, 2, 3], [3.9, 3.8, 3.7]), "fm": ([1, 2, 3], [4.0, 3.9, 3.75])}
    _check(plots.plot_curves(tmp_path / "c.png", curves, "time (s)", "NLL",
                             hline=3.676, hline_label="entropy"))


def test_plot_chi_square(tmp_path):
    H = np.cumsum(0.025 * 1.25 ** np.arange(8))
    ex = 2.0 * np.exp(-2 * H) + 0.02
    _check(plots.plot_chi_square(tmp_path / "chi.png", H, ex))
    # with the H = 0 anchor, error bars, chi2 and a non-positive value (left out)
    ex2 = ex.copy()
    ex2[-1] = -0.01
    _check(plots.plot_chi_square(tmp_path / "chi2.png", H, ex2, initial_excess=2.5,
                                 chi2=3 * ex, excess_stderr=0.01 * np.ones(8), title="t"))
    with pytest.raises(ValueError, match="one length"):
        plots.plot_chi_square(tmp_path / "bad.png", H, ex[:3])


def test_plot_pairs(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.normal(size=(3000, 6))
    _check(plots.plot_pairs(tmp_path / "pairs.png", y, data=y * 1.5, n_points=500))
    _check(plots.plot_pairs(tmp_path / "pairs_dims.png", y, dims=(5, 0, 2), title="x"))
    with pytest.raises(ValueError, match="dims"):
        plots.plot_pairs(tmp_path / "bad.png", y, dims=(0, 6))


def test_plot_loss_blocks_and_validation(tmp_path):
    steps = np.arange(300)
    loss = np.exp(-(steps % 100) / 30.0) + 0.05 * np.random.default_rng(3).random(300)
    _check(plots.plot_loss(tmp_path / "loss_blocks.png", steps, loss, boundaries=[100, 200],
                           val=([99, 199, 299], [0.2, 0.15, 0.12]), smooth=10))


def test_plot_trajectories_noise_labels_and_dims(tmp_path):
    trajs = np.cumsum(np.random.default_rng(4).normal(size=(10, 50, 4)), axis=0)
    _check(plots.plot_trajectories(tmp_path / "t_noise.png", trajs, noise_at="start",
                                   dims=(1, 3)))
    with pytest.raises(ValueError, match="noise_at"):
        plots.plot_trajectories(tmp_path / "bad.png", trajs, noise_at="middle")
