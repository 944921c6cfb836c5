"""Resolve a `--config` value to a config file: a path, or the name of a shipped config.

    --config configs/lfm_checkerboard.py          a file (relative to the current directory)
    --config lfm_checkerboard                     a name: <installed configs package>/lfm_checkerboard.py
    --config lfm_checkerboard:arg                 either form may carry ml-collections' `:arg`

A value whose file part exists is returned unchanged. Otherwise the file part is read as
a name: its stem (so `configs/lfm_checkerboard.py` also resolves from another directory)
looked up in the directory of the importable `configs` package, which `pip install .`
ships. The package is found with `importlib.util.find_spec`, not imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["configs_dir", "available", "resolve", "resolve_argv"]


def configs_dir() -> Path | None:
    """Directory of the importable `configs` package, or None if there is none."""
    spec = importlib.util.find_spec("configs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def available() -> list[str]:
    """Names of the shipped configs (modules of `configs` with a get_config)."""
    root = configs_dir()
    if root is None:
        return []
    return sorted(p.stem for p in root.glob("*.py")
                  if not p.stem.startswith("_") and "def get_config" in p.read_text())


def resolve(spec: str) -> str:
    """`path[:arg]` or `name[:arg]` -> `file[:arg]` for ml-collections' config flag.

    Raises:
        FileNotFoundError: neither a file nor a shipped config name; the message lists
            the known names.
    """
    path, sep, arg = spec.partition(":")
    if not path:
        raise FileNotFoundError("--config is empty: pass a config file or a config name")
    if os.path.isfile(path):
        return spec
    root = configs_dir()
    name = Path(path).stem if path.endswith(".py") else path
    candidate = root / f"{name}.py" if root is not None and "/" not in name else None
    if candidate is None or not candidate.is_file():
        where = f"in {root}" if root is not None else "(no importable `configs` package)"
        raise FileNotFoundError(
            f"--config {spec!r}: no file {path!r} and no config named {name!r} {where}; "
            f"known names: {', '.join(available()) or 'none'}")
    return str(candidate) + sep + arg


def resolve_argv(argv: list[str]) -> list[str]:
    """argv with the value of `--config X` / `--config=X` passed through `resolve`
    (flags such as `--config.train.lr=...` are left alone)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config=") or a.startswith("-config="):
            flag, _, value = a.partition("=")
            out[i] = f"{flag}={resolve(value)}"
        elif a in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out
