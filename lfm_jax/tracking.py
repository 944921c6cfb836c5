"""Experiment tracking: TensorBoard event files through tensorboardX (no TensorFlow).

    tracker = tracking.make(workdir, enabled=config.log.tensorboard, purge_step=start)
    tracker.write_scalars(step, {"loss": loss, "grad_norm": g, "lr": lr})
    tracker.write_figures(step, {"samples": fig})        # matplotlib figures
    tracker.write_image_files(step, {"samples": path})   # PNGs the jobs already write
    tracker.close()
    # then: tensorboard --logdir runs/   (a sweep's runs appear under their names)

The event files go into the workdir itself, so `tensorboard --logdir` over a sweep
directory lists each run by its workdir name. Only process 0 writes
(`jax.process_index() == 0`); every other process, and any process when `enabled` is
False, gets a `NoOpTracker` with the same methods, so callers never branch.

Resuming: pass the step the run resumed from as `purge_step`; tensorboardX then writes
a session-start marker at that step and TensorBoard drops the events at steps >=
purge_step logged by the interrupted process, so each step is shown once.

Tags are strings; use "/" to group (e.g. "block_3/loss", "final/test_nll").
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import numpy as np

__all__ = ["Tracker", "NoOpTracker", "make"]


def _scalar(tag: str, value: Any) -> float:
    arr = np.asarray(value)
    if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"scalar {tag!r}: expected a number, got {type(value).__name__} "
                         f"of shape {arr.shape}")
    return float(arr)


def _image(tag: str, image: Any) -> tuple[np.ndarray, str]:
    """(array, tensorboardX dataformats): HW grayscale or HWC with C in {1, 3, 4};
    uint8 in [0, 255] or floats in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        fmt = "HW"
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        fmt = "HWC"
    else:
        raise ValueError(f"image {tag!r}: expected shape (H, W) or (H, W, C) with C in "
                         f"1, 3, 4, got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if arr.size and (np.nanmin(arr) < 0.0 or np.nanmax(arr) > 1.0):
            raise ValueError(f"image {tag!r}: float values must lie in [0, 1], got "
                             f"[{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]")
    return arr, fmt


class Tracker:
    """TensorBoard writer for one run (process 0); see the module docstring.

    Args:
        logdir: directory of the event files (created).
        purge_step: the step a resumed run restarts from (events at steps >= it from
            earlier processes are hidden), or None for a fresh run.
        flush_secs: seconds between automatic flushes.
    """

    enabled = True

    def __init__(self, logdir: str, purge_step: Optional[int] = None, flush_secs: int = 60):
        from tensorboardX import SummaryWriter

        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self._writer = SummaryWriter(logdir, purge_step=purge_step, flush_secs=flush_secs)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One scalar event per tag at `step`; values are numbers or 0-d arrays."""
        values = {tag: _scalar(tag, v) for tag, v in scalars.items()}
        for tag, v in values.items():
            self._writer.add_scalar(tag, v, int(step))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """One image per tag: (H, W) or (H, W, C) arrays, uint8 or floats in [0, 1]."""
        checked = {tag: _image(tag, im) for tag, im in images.items()}
        for tag, (arr, fmt) in checked.items():
            self._writer.add_image(tag, arr, int(step), dataformats=fmt)

    def write_image_files(self, step: int, paths: Mapping[str, str]) -> None:
        """Images read from PNG files (e.g. the samples.png a job writes)."""
        import matplotlib.image

        for tag, path in paths.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image {tag!r}: no file {path}")
        self.write_images(step, {tag: matplotlib.image.imread(p) for tag, p in paths.items()})

    def write_figures(self, step: int, figures: Mapping[str, Any], close: bool = True) -> None:
        """Matplotlib figures rendered to images (closed afterwards if `close`)."""
        for tag, fig in figures.items():
            self._writer.add_figure(tag, fig, int(step), close=close)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoOpTracker:
    """A tracker that writes nothing (tracking disabled, or not process 0)."""

    enabled = False
    logdir = None

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        pass

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        pass

    def write_image_files(self, step: int, paths: Mapping[str, str]) -> None:
        pass

    def write_figures(self, step: int, figures: Mapping[str, Any], close: bool = True) -> None:
        if close:
            import matplotlib.pyplot as plt

            for fig in figures.values():
                plt.close(fig)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def make(workdir: str, enabled: bool = True, purge_step: Optional[int] = None,
         subdir: str = "") -> Tracker | NoOpTracker:
    """The run's tracker: a `Tracker` writing to `<workdir>/<subdir>` on process 0 when
    `enabled`, else a `NoOpTracker`. `purge_step`: the restored step of a resumed run."""
    if not enabled or jax.process_index() != 0:
        return NoOpTracker()
    return Tracker(os.path.join(workdir, subdir) if subdir else workdir, purge_step=purge_step)
