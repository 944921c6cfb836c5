"""Progress bar and JSON-lines metrics.

`Progress` prints step, loss, steps/s and ETA (tqdm, to stderr, only on process 0).
`MetricsWriter` appends one JSON object per line to `<workdir>/metrics.jsonl` and,
if tensorboardX or tf is importable and `tensorboard=True`, mirrors scalars there.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import jax
import numpy as np


class Progress:
    """tqdm bar over training steps (process 0 only): step, loss, steps/s and ETA."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train",
                 disable: bool | None = None):
        from tqdm.auto import tqdm

        if disable is None:
            disable = jax.process_index() != 0
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=disable,
                        dynamic_ncols=True, mininterval=0.5)
        self.last = initial

    def update(self, step: int, loss: float | None = None) -> None:
        self.bar.update(step - self.last)
        self.last = step
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def to_python(v):
    if isinstance(v, (np.ndarray, jax.Array)):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {k: to_python(x) for k, x in v.items()}
    return v


class MetricsWriter:
    """Append-only JSON-lines writer (process 0 only)."""

    def __init__(self, path: str, tensorboard: bool = False):
        self.path = path
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                    self._tb = SummaryWriter(os.path.dirname(os.path.abspath(path)))
                except ImportError:
                    self._tb = None

    def write(self, step: int, **scalars) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time(), **to_python(scalars)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if np.ndim(v) == 0:
                    self._tb.add_scalar(k, float(v), step)


def read_jsonl(path: str) -> list[dict]:
    """All records of a JSON-lines file, in order.

    A last line that does not parse (torn by a kill during `MetricsWriter.write`) is
    dropped with a RuntimeWarning naming the file; a bad line before the last raises
    ValueError naming the file and the line number.
    """
    with open(path) as f:
        lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
    records = []
    for j, (lineno, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if j == len(lines) - 1:
                warnings.warn(f"{path}: dropping the torn last line {lineno} "
                              f"({line.strip()[:80]!r})", RuntimeWarning, stacklevel=2)
                break
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({e}); only a "
                             "torn last line is dropped automatically") from e
    return records


def write_json(path: str, obj) -> None:
    """Write obj (arrays converted to lists) as indented JSON (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(to_python(obj), f, indent=2)


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drop records with step > last_step (written after the checkpoint a run
    resumes from), so a resumed run's log holds each step once; a torn last line is
    dropped too (with a warning, see `read_jsonl`), so later appends start on a
    fresh line."""
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
