"""Figures for experiments: samples, trajectories, losses and generic curves.

Every function builds its own `matplotlib.figure.Figure` (the object-oriented API,
rendered with the Agg canvas; pyplot's global state and `plt.show` are never used),
saves a PNG to `path` (creating parent folders) and returns the path. Inputs may be
numpy or jax arrays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_samples", "plot_trajectories", "plot_loss", "plot_curves"]


def _new_figure(figsize) -> Figure:
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    fig.clear()
    return path


def _limits(arrays: Sequence[np.ndarray], q: float = 0.5, margin: float = 0.05):
    """Per-coordinate (lo, hi), shape (d, 2): pooled [q, 100 - q] percentiles + margin."""
    arrays = [a for a in arrays if a is not None]
    pooled = np.concatenate(arrays, axis=0)
    pooled = pooled[np.all(np.isfinite(pooled), axis=1)]
    if pooled.shape[0] == 0:
        return np.tile(np.array([[-1.0, 1.0]]), (arrays[0].shape[1], 1))
    lo, hi = np.percentile(pooled, [q, 100.0 - q], axis=0)
    span = np.maximum(hi - lo, 1e-6)
    return np.stack([lo - margin * span, hi + margin * span], axis=1)


def plot_samples(path, samples, data=None, title: Optional[str] = None, bins: int = 100,
                 lims=None, n_marginals: int = 4) -> Path:
    """Compare model samples (n, D) with data (m, D).

    D = 2: side-by-side 2-D histograms (data | model) over one shared square range
    (`lims` = ((x_lo, x_hi), (y_lo, y_hi)), default the pooled 0.5 / 99.5 percentiles
    of data and samples). D > 2: scatter of coordinates (0, 1), plus overlaid
    histograms of the first `n_marginals` coordinates.
    """
    samples = np.asarray(samples, dtype=np.float64)
    data = None if data is None else np.asarray(data, dtype=np.float64)
    dim = samples.shape[1]
    lim = np.asarray(lims, dtype=np.float64) if lims is not None else _limits([data, samples])
    if dim == 2:
        panels = [("data", data), ("model", samples)] if data is not None else [("model", samples)]
        fig = _new_figure((4.0 * len(panels), 4.0))
        for i, (label, arr) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            ax.hist2d(arr[:, 0], arr[:, 1], bins=bins, range=lim[:2].tolist(), cmap="viridis")
            ax.set_title(label)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    else:
        k = min(n_marginals, dim)
        fig = _new_figure((4.0 * (k + 1), 4.0))
        ax = fig.add_subplot(1, k + 1, 1)
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=1, alpha=0.3, c="0.5", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3, c="C0", label="model")
        ax.set_xlim(*lim[0])
        ax.set_ylim(*lim[1])
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.legend(markerscale=8, loc="upper right")
        for j in range(k):
            ax = fig.add_subplot(1, k + 1, j + 2)
            edges = np.linspace(lim[j, 0], lim[j, 1], min(bins, 60) + 1)
            if data is not None:
                ax.hist(data[:, j], bins=edges, density=True, alpha=0.5, color="0.5", label="data")
            ax.hist(samples[:, j], bins=edges, density=True, histtype="step", color="C0",
                    label="model")
            ax.set_title(f"x[{j}]")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_trajectories(path, trajs, n_show: int = 200, title: Optional[str] = None) -> Path:
    """Paths of an ODE flow: trajs (T, n, 2), the first `n_show` particles.

    Lines join the T time points of each particle; start points (t index 0) are black,
    end points (index T - 1) are blue.
    """
    trajs = np.asarray(trajs, dtype=np.float64)
    if trajs.ndim != 3 or trajs.shape[-1] != 2:
        raise ValueError(f"expected trajectories of shape (T, n, 2), got {trajs.shape}")
    tr = trajs[:, :n_show]
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(tr[:, :, 0], tr[:, :, 1], color="olive", alpha=0.3, linewidth=0.7)
    ax.scatter(tr[0, :, 0], tr[0, :, 1], s=4, c="black", label="t = start", zorder=3)
    ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=4, c="C0", label="t = end", zorder=3)
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_loss(path, steps, losses, ylog: bool = True, title: Optional[str] = None) -> Path:
    """Training loss against step, log-scaled y axis by default."""
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, linewidth=1.0)
    if ylog and np.all(losses[np.isfinite(losses)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_curves(path, curves: Mapping[str, tuple], xlabel: str = "", ylabel: str = "",
                hline: Optional[float] = None, hline_label: Optional[str] = None,
                title: Optional[str] = None, xlog: bool = False, ylog: bool = False) -> Path:
    """Several labelled curves {label: (x, y)} on one axis, with an optional
    horizontal reference line (e.g. the entropy floor of an NLL, or 0)."""
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for label, (x, y) in curves.items():
        ax.plot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                marker="o", markersize=3, label=label)
    if hline is not None:
        ax.axhline(float(hline), color="black", linestyle="--", linewidth=1.0,
                   label=hline_label)
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if curves or hline_label:
        ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)
