"""What produced a workdir: the full config and the command line of every start,
a refusal to resume with settings that change training, and run totals (training
time) that add up across restarts.

Files written in the workdir (process 0 only, each atomically):

- `config.json`: the full config of the latest start (JSON; tuples become lists).
- `runs.jsonl`: one record per start: time, argv, cwd, whether it resumed, and the
  evaluation-only keys it changed.
- `diverged.json`: written by `mark_diverged` when training stopped on a non-finite
  loss; the next start may then change the keys of `AFTER_DIVERGENCE_KEYS` (the
  remedy the error message gives: a lower lr, clipping, a warm-up).
- `train_clock.json` (or any path): `TrainClock` totals.

Which keys may change on resume: those under a prefix of `EVAL_ONLY_KEYS` (they do
not alter the trained parameters: evaluation settings, how long to train, how often
to checkpoint, device count, where the data files live, per-block reports).
Everything else (data, model, method, seed, fm, lfm, flow_map, train except those
listed) alters training and is refused. Note that train.steps also sets the length
of a cosine / linear lr schedule, so extending a run with such a schedule is not
the run an uninterrupted longer one would have been.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Iterable, Mapping

import jax

from lfm_jax import files

EVAL_ONLY_KEYS = (
    "eval",
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_devices",
    "data.path",
    "lfm.chunk_size",
    "lfm.n_val",
    "lfm.divergence",
    "lfm.n_probes",
    "flow_map.sample_steps",
    "log",
)
AFTER_DIVERGENCE_KEYS = ("train.lr", "train.grad_clip", "train.warmup_steps")

CONFIG_FILE = "config.json"
RUNS_FILE = "runs.jsonl"
DIVERGED_FILE = "diverged.json"


class ConfigChangedError(ValueError):
    """Resuming a workdir with settings that change training."""


def config_to_dict(config) -> dict:
    """A JSON-normal nested dict of a ConfigDict / mapping (tuples become lists)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=lambda v: v.tolist()
                                 if hasattr(v, "tolist") else str(v)))


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"a.b.c": value} of a nested dict."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def changed_keys(old, new, *, ignore: Iterable[str] = ()) -> dict:
    """{key: (old value, new value)} of every leaf key that differs (a key present in
    one config only counts, with value None on the other side), except keys under a
    prefix in `ignore`."""
    a, b = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    ignore = tuple(ignore)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not _under(k, ignore)}


def record_run(config, workdir: str, argv: list | None = None, *,
               eval_only: Iterable[str] = EVAL_ONLY_KEYS) -> dict:
    """Record this start in `workdir`, refusing a resume that changes training.

    On the first start writes `config.json` and a `runs.jsonl` record. When
    `config.json` exists (a resume), compares: keys changed outside `eval_only`
    (and outside `AFTER_DIVERGENCE_KEYS` if the last run diverged) raise
    ConfigChangedError listing each "key: old -> new"; otherwise config.json is
    replaced by this config and the changes are recorded. Call it before any work.

    Args:
      config: the run config (ConfigDict or nested dict).
      argv: the command line (default sys.argv).
    Returns:
      {key: (old, new)} of the allowed changes ({} on a first start).
    """
    argv = list(sys.argv if argv is None else argv)
    path = os.path.join(workdir, CONFIG_FILE)
    new = config_to_dict(config)
    changes, resumed = {}, os.path.exists(path)
    if resumed:
        old = files.load_json(path)
        allowed = tuple(eval_only)
        diverged = os.path.exists(os.path.join(workdir, DIVERGED_FILE))
        if diverged:
            allowed += AFTER_DIVERGENCE_KEYS
        refused = changed_keys(old, new, ignore=allowed)
        if refused:
            lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise ConfigChangedError(
                f"{workdir} was trained with other settings; resuming would mix two "
                f"runs. Changed keys that alter training:\n{lines}\nUse a new workdir, "
                f"or the settings of {path}. Keys that may change on resume: "
                f"{', '.join(allowed)}.")
        changes = changed_keys(old, new)
    if jax.process_index() == 0:
        files.save_json(path, new)
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "argv": argv, "cwd": os.getcwd(), "resumed": resumed,
                  "changed": {k: list(v) for k, v in changes.items()}}
        with open(os.path.join(workdir, RUNS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        marker = os.path.join(workdir, DIVERGED_FILE)
        if resumed and os.path.exists(marker):
            os.remove(marker)
    return changes


def mark_diverged(workdir: str, message: str) -> None:
    """Note in `workdir` that training stopped on a non-finite loss, so the next
    `record_run` accepts changes to `AFTER_DIVERGENCE_KEYS`."""
    if jax.process_index() == 0:
        files.save_json(os.path.join(workdir, DIVERGED_FILE),
                        {"time": time.time(), "message": str(message)})


class TrainClock:
    """Training wall-clock time that adds up across restarts.

    `path` (JSON) holds {"train_time_s": total, "step": last step, ...extra}. The
    clock starts from the stored total; `save(step, **extra)` stores total + the
    time since construction (call it after each fused call or checkpoint, so a kill
    loses at most the time since the last save); `total()` reads the running total.
    A damaged file is reported (RuntimeWarning) and counted as 0.
    """

    def __init__(self, path: str):
        self.path = path
        stored = files.load_or_none(files.load_json, path) or {}
        self.base = float(stored.get("train_time_s", 0.0))
        self.stored = stored
        self._t0 = time.perf_counter()

    def total(self) -> float:
        return self.base + time.perf_counter() - self._t0

    def save(self, step: int, **extra) -> float:
        """Write the running total (and `step`, `extra`); returns the total."""
        total = self.total()
        if jax.process_index() == 0:
            files.save_json(self.path, {**self.stored, **extra, "train_time_s": total,
                                        "step": int(step)})
        return total
