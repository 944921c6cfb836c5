"""Side files of a run (arrays, parameter pytrees, JSON) written atomically and read
back with errors that name the file.

Writers put the bytes in `<path>.tmp<pid>` in the same folder, flush and fsync it, then
`os.replace` it onto `path`: a reader sees the old file or the whole new one, never
half of one, even if the process is killed mid-write (`os.replace` is atomic on
POSIX within one file system). A file can still be damaged afterwards (a full disk
at copy time, a truncated transfer); loaders then raise `DamagedFileError` (a
ValueError whose message starts with the path).

Derived files (e.g. a cached teacher, a train clock) can be recomputed:
`load_or_none(load_fn, path, ...)` returns None for a missing file and, with a
warning naming the path, for a damaged one, so the caller recomputes and rewrites it.

Writers write on every process; call them on process 0 only in multi-host runs.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable

import flax.serialization
import numpy as np

__all__ = ["DamagedFileError", "atomic_write_bytes", "save_npy", "load_npy", "save_json",
           "load_json", "save_msgpack", "load_msgpack", "load_or_none"]


class DamagedFileError(ValueError):
    """A file exists but cannot be read back (truncated, corrupt, wrong content)."""


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` via `<path>.tmp`, fsync and `os.replace`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"  # per process: several may write the same file
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_bytes(path: str) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as f:
        return f.read()


def save_npy(path: str, array) -> None:
    """Save one array in .npy format (no pickles), atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str, *, shape: tuple | None = None) -> np.ndarray:
    """Load a .npy array written by `save_npy`.

    Args:
      shape: expected shape (None entries match anything), checked if given.
    Raises:
      FileNotFoundError: no such file.
      DamagedFileError: truncated or not a .npy file, or the wrong shape.
    """
    import io

    raw = _read_bytes(path)
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise DamagedFileError(f"{path}: damaged .npy file ({len(raw)} bytes): {e}") from e
    if shape is not None and (len(shape) != arr.ndim or any(
            s is not None and s != a for s, a in zip(shape, arr.shape))):
        raise DamagedFileError(f"{path}: expected shape {tuple(shape)}, got {arr.shape}")
    return arr


def save_json(path: str, obj) -> None:
    """Save a JSON-able object (numpy / jax scalars and arrays allowed), atomically."""
    def default(v):
        if hasattr(v, "tolist"):
            return v.tolist()
        raise TypeError(f"{type(v).__name__} is not JSON serialisable")

    atomic_write_bytes(path, json.dumps(obj, indent=2, default=default).encode())


def load_json(path: str):
    """Load a JSON file; DamagedFileError (naming the file) if it does not parse."""
    raw = _read_bytes(path)
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFileError(f"{path}: damaged JSON file ({len(raw)} bytes): {e}") from e


def save_msgpack(path: str, tree) -> None:
    """Save a pytree of arrays with `flax.serialization.to_bytes`, atomically."""
    atomic_write_bytes(path, flax.serialization.to_bytes(tree))


def load_msgpack(path: str, target: Any = None):
    """Load a pytree saved by `save_msgpack`.

    With `target`, the result has its structure (`flax.serialization.from_bytes`) and
    every leaf must have the target leaf's shape; without, a nested dict.
    Raises:
      FileNotFoundError: no such file.
      DamagedFileError: truncated / corrupt bytes or a structure or shape mismatch.
    """
    import jax

    raw = _read_bytes(path)
    try:
        state = flax.serialization.msgpack_restore(raw)
        if target is None:
            return state
        tree = flax.serialization.from_state_dict(target, state)
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise DamagedFileError(f"{path}: damaged msgpack file ({len(raw)} bytes): "
                               f"{type(e).__name__}: {e}") from e
    for got, want in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(target)):
        if np.shape(got) != np.shape(want):
            raise DamagedFileError(f"{path}: a leaf has shape {np.shape(got)}, expected "
                                   f"{np.shape(want)}")
    return tree


def load_or_none(load: Callable, path: str, *args, **kwargs):
    """`load(path, ...)`, or None if the file is missing or damaged (the latter with
    a RuntimeWarning naming the path, and the file renamed `<path>.damaged`), for
    derived files that the caller recomputes."""
    try:
        return load(path, *args, **kwargs)
    except FileNotFoundError:
        return None
    except DamagedFileError as e:
        warnings.warn(f"{e}; moved to {path}.damaged and recomputing it", RuntimeWarning,
                      stacklevel=2)
        os.replace(path, os.fspath(path) + ".damaged")
        return None
