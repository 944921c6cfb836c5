"""Tests for lfm_jax.plots: each function writes a non-empty PNG."""
import jax
import numpy as np

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
