"""Figures for experiments: samples, pair plots, trajectories, losses, curves and
the LFM chi-square diagnostic.

Every function builds its own `matplotlib.figure.Figure` (the object-oriented API,
rendered with the Agg canvas; pyplot's global state and `plt.show` are never used),
saves a PNG to `path` (creating parent folders; on process 0 only in a multi-process
run) and returns the path. Inputs may be
numpy or jax arrays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_samples", "plot_pairs", "plot_trajectories", "plot_loss", "plot_curves",
           "plot_chi_square", "plot_image_grid"]


def _new_figure(figsize) -> Figure:
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    if jax.process_index() != 0:  # multi-process runs: process 0 draws the figures
        fig.clear()
        return path
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


_NOISE_LABELS = {None: ("start", "end"), "start": ("noise", "data"),
                 "end": ("data", "noise")}


def plot_trajectories(path, trajs, n_show: int = 200, title: Optional[str] = None, *,
                      noise_at: Optional[str] = None, start_label: Optional[str] = None,
                      end_label: Optional[str] = None, dims: Sequence[int] = (0, 1)) -> Path:
    """Paths of an ODE flow: trajs (T, n, D), the first `n_show` particles.

    Lines join the T time points of each particle in the plane of coordinates `dims`;
    start points (index 0) are black, end points (index T - 1) blue. `noise_at` says
    which end is noise: "start" (labels noise -> data, e.g. FM sampling from t = 0, or
    LFM generation from t = 1 of the last block), "end" (data -> noise, e.g. an LFM
    push or an FM likelihood solve), or None (labels "start" / "end"). `start_label`
    and `end_label` override the legend text (e.g. "noise, t = 1").
    """
    if noise_at not in _NOISE_LABELS:
        raise ValueError(f"noise_at must be 'start', 'end' or None, got {noise_at!r}")
    trajs = np.asarray(trajs, dtype=np.float64)
    if trajs.ndim != 3 or trajs.shape[-1] < 2:
        raise ValueError(f"expected trajectories of shape (T, n, D) with D >= 2, got "
                         f"{trajs.shape}")
    i, j = (int(d) for d in dims)
    if not (0 <= i < trajs.shape[-1] and 0 <= j < trajs.shape[-1]) or i == j:
        raise ValueError(f"dims {tuple(dims)} must be two different coordinates of "
                         f"0..{trajs.shape[-1] - 1}")
    first, last = _NOISE_LABELS[noise_at]
    first, last = start_label or first, end_label or last
    tr = trajs[:, :n_show][..., [i, j]]
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(tr[:, :, 0], tr[:, :, 1], color="olive", alpha=0.3, linewidth=0.7)
    ax.scatter(tr[0, :, 0], tr[0, :, 1], s=4, c="black", label=first, zorder=3)
    ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=4, c="C0", label=last, zorder=3)
    ax.set_aspect("equal")
    ax.set_xlabel(f"x[{i}]")
    ax.set_ylabel(f"x[{j}]")
    ax.legend(loc="upper right", markerscale=3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points (shorter at the start), same length as y."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.concatenate([[0.0], np.cumsum(y)])
    end = np.arange(1, len(y) + 1)
    k = np.minimum(end, window)
    return (c[end] - c[end - k]) / k


def plot_loss(path, steps, losses, ylog: bool = True, title: Optional[str] = None, *,
              val=None, boundaries: Optional[Sequence[float]] = None,
              boundary_labels: Optional[Sequence[str]] = None, smooth: int = 1) -> Path:
    """Training loss against step, log-scaled y axis by default.

    val: optional (steps, values) of a validation curve, drawn on the same axis.
    boundaries: steps where a new block starts (LFM: all blocks one after another),
    drawn as dashed vertical lines, labelled `boundary_labels` (default "block 2",
    "block 3", ...: the first block starts at the left edge). smooth > 1 also draws the
    trailing moving average over `smooth` steps of the training loss.
    """
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    fig = _new_figure((7.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    raw_alpha = 0.35 if smooth > 1 else 1.0
    ax.plot(steps, losses, linewidth=1.0, alpha=raw_alpha, color="C0", label="train")
    if smooth > 1:
        ax.plot(steps, _moving_average(losses, int(smooth)), linewidth=1.2, color="C0",
                label=f"train, mean of {int(smooth)}")
    positive = losses[np.isfinite(losses)]
    if val is not None:
        v_steps, v_vals = (np.asarray(a, dtype=np.float64) for a in val)
        ax.plot(v_steps, v_vals, marker="o", markersize=3, color="C3", label="validation")
        positive = np.concatenate([positive, v_vals[np.isfinite(v_vals)]])
    if ylog and np.all(positive > 0):
        ax.set_yscale("log")
    if boundaries is not None:
        labels = (boundary_labels if boundary_labels is not None
                  else [f"block {n + 2}" for n in range(len(boundaries))])
        for b, label in zip(boundaries, labels):
            ax.axvline(float(b), color="0.4", linestyle="--", linewidth=0.8)
            ax.text(float(b), 1.0, f" {label}", transform=ax.get_xaxis_transform(),
                    rotation=90, va="top", ha="left", fontsize=7, color="0.3")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if val is not None or smooth > 1:
        ax.legend(loc="upper right")
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


def plot_pairs(path, samples, data=None, dims: Optional[Sequence[int]] = None,
               max_dims: int = 4, n_points: int = 2000, bins: int = 50,
               title: Optional[str] = None, seed: int = 0) -> Path:
    """Pair plot of model samples (n, D) against data (m, D), for any D >= 2.

    Coordinates `dims` (default the first min(max_dims, D)), k of them: a k x k grid
    whose diagonal overlays the histograms of each coordinate (data grey, model blue
    outline) and whose panel (a, b), a != b, overlays scatters of (x[dims[b]],
    x[dims[a]]) for at most `n_points` random rows of each (data grey, model blue).
    Axis ranges are the pooled 0.5 / 99.5 percentiles, shared along rows and columns.
    """
    samples = np.asarray(samples, dtype=np.float64)
    data = None if data is None else np.asarray(data, dtype=np.float64)
    dim = samples.shape[1]
    dims = list(range(min(max_dims, dim))) if dims is None else [int(d) for d in dims]
    if len(dims) < 2 or any(not 0 <= d < dim for d in dims):
        raise ValueError(f"dims must name at least 2 coordinates of 0..{dim - 1}, got {dims}")
    if data is not None and data.shape[1] != dim:
        raise ValueError(f"samples have {dim} coordinates but data {data.shape[1]}")
    rng = np.random.default_rng(seed)

    def subset(a):
        if a is None:
            return None
        a = a[np.all(np.isfinite(a), axis=1)]
        return a[rng.choice(len(a), n_points, replace=False)] if len(a) > n_points else a

    s_sub, d_sub = subset(samples)[:, dims], None if data is None else subset(data)[:, dims]
    lim = _limits([d_sub, s_sub])
    k = len(dims)
    fig = _new_figure((2.4 * k, 2.4 * k))
    for a in range(k):
        for b in range(k):
            ax = fig.add_subplot(k, k, a * k + b + 1)
            if a == b:
                edges = np.linspace(lim[a, 0], lim[a, 1], bins + 1)
                if d_sub is not None:
                    ax.hist(d_sub[:, a], bins=edges, density=True, color="0.6",
                            label="data")
                ax.hist(s_sub[:, a], bins=edges, density=True, histtype="step", color="C0",
                        label="model")
                ax.set_yticks([])
            else:
                if d_sub is not None:
                    ax.scatter(d_sub[:, b], d_sub[:, a], s=1, alpha=0.3, c="0.5",
                               label="data", rasterized=True)
                ax.scatter(s_sub[:, b], s_sub[:, a], s=1, alpha=0.3, c="C0", label="model",
                           rasterized=True)
                ax.set_ylim(*lim[a])
            ax.set_xlim(*lim[b])
            if a == k - 1:
                ax.set_xlabel(f"x[{dims[b]}]")
            else:
                ax.set_xticklabels([])
            if b == 0 and a != b:
                ax.set_ylabel(f"x[{dims[a]}]")
            elif a != b:
                ax.set_yticklabels([])
            if a == 0 and b == k - 1:
                ax.legend(markerscale=8, loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_chi_square(path, cum_time, excess_nll, *, initial_excess: Optional[float] = None,
                    chi2=None, excess_stderr=None, title: Optional[str] = None) -> Path:
    """LFM chi-square diagnostic (docs/maths.md section 3): excess NLL against H_n.

    cum_time (N,): cumulative OU time H_n = h_1 + ... + h_n after block n;
    excess_nll (N,): NLL of q_n minus the data entropy on data of known density (an
    estimate of KL(p || q_n)), optionally with `excess_stderr` (N,) error bars and the
    chi2(p || q_n) estimates `chi2` (N,). The dashed line is the OU contraction
    E_0 exp(-2 H), anchored at the initial excess: E_0 = `initial_excess` at H = 0 if
    given (the excess of q_0 = N(0, I), drawn as a point), else the first block's value
    at H_1 (line E_1 exp(-2 (H - H_1))). The measured excess should follow the line
    until it meets the floor set by the FM error. Log-scale y: values <= 0 or not
    finite are left out.
    """
    H = np.asarray(cum_time, dtype=np.float64).reshape(-1)
    ex = np.asarray(excess_nll, dtype=np.float64).reshape(-1)
    if H.shape != ex.shape or H.size == 0:
        raise ValueError(f"cum_time and excess_nll must be non-empty and of one length, got "
                         f"{H.shape} and {ex.shape}")
    if initial_excess is not None:
        H0, E0 = 0.0, float(initial_excess)
    else:
        H0, E0 = float(H[0]), float(ex[0])
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ok = np.isfinite(ex) & (ex > 0)
    err = None if excess_stderr is None else np.asarray(excess_stderr, np.float64)[ok]
    ax.errorbar(H[ok], ex[ok], yerr=err, marker="o", markersize=4, capsize=2,
                label="excess NLL (KL estimate)")
    if initial_excess is not None and E0 > 0:
        ax.plot([0.0], [E0], marker="s", color="C0", linestyle="none",
                label="excess of N(0, I), H = 0")
    if chi2 is not None:
        c = np.asarray(chi2, dtype=np.float64).reshape(-1)
        okc = np.isfinite(c) & (c > 0)
        ax.plot(H[okc], c[okc], marker="^", markersize=4, color="C2",
                label="chi2(p || q_n) estimate")
    if E0 > 0 and np.isfinite(E0):
        grid = np.linspace(H0, max(float(np.max(H)), H0), 100)
        ax.plot(grid, E0 * np.exp(-2.0 * (grid - H0)), color="black", linestyle="--",
                linewidth=1.0, label="OU contraction exp(-2 H)")
    ax.set_yscale("log")
    ax.set_xlabel("cumulative OU time H_n")
    ax.set_ylabel("excess NLL (nats)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_image_grid(path, images, nrow: int, title: Optional[str] = None,
                    row_labels: Optional[Sequence[str]] = None) -> Path:
    """A grid of images (n, H, W, C) in [-1, 1] (clipped), nrow rows filled row by
    row (e.g. one class per row), with optional row labels; C = 1 in grey."""
    x = np.clip((np.asarray(images, np.float64) + 1.0) / 2.0, 0.0, 1.0)
    n, h, w, c = x.shape
    ncol = -(-n // nrow)
    canvas = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c))
    for i in range(n):
        r, k = divmod(i, ncol)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = x[i]
    scale = max(0.05, min(0.4, 8.0 / max(h, 1)) * 0.25)
    fig = _new_figure((max(2.0, ncol * (w + 1) * scale + 1), max(2.0, nrow * (h + 1) * scale + 0.6)))
    ax = fig.add_subplot(111)
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None,
              vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(row_labels))])
        ax.set_yticklabels(list(row_labels))
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
