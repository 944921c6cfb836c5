"""The artefacts of a trained LFM block in one orbax composite checkpoint.

`BlockArtefacts(workdir, n)` keeps block n's artefacts in
<workdir>/blocks/<n>/artefacts/<version>/, one composite (`ocp.args.Composite`) with
the items

  params        {"params", "ema_params"}: the block's final raw and EMA params
  train_pushed  {"x"}: the training rows pushed through the block (the data of block
                n + 1; for the last block only the rows its report checks)
  val_pushed    {"x", "logdet"}: the validation points pushed through blocks 1..n and
                their cumulative log-determinant
  report        the block's report (`lfm_reports.block_report`, JSON)

An item is added as soon as it is computed: `save(**items)` writes a new version
holding every item held so far plus the new ones (orbax's CheckpointManager, one
version kept), so a run killed at any moment and restarted finds every item computed
before the kill and recomputes only the others. Orbax writes each version into a
temporary folder renamed when complete and deletes the previous version only after
that: a kill leaves the previous version (and a `*.orbax-checkpoint-tmp*` folder that
the next start removes), never half of one.

Damage after the fact (a truncated, garbled or deleted file): every array item
carries the CRC-32 of its arrays (orbax custom metadata), checked on restore, and an
item that fails to restore, fails its checksum or has the wrong shape or structure is
damaged. The loaders taking `recover=True` (the block loop) then warn naming the
item's folder, set the version aside as `<version>.damaged` (`checkpoint.set_aside`;
its intact items are kept, in memory, for the next version) and return None, so that
the caller recomputes the item; without, they raise `files.DamagedFileError` naming
it. A JSON report is checked by parsing only.

Every process of a multi-process run must make the same calls (orbax saves and
restores are collective; the host arrays are written by process 0). Readers of a
trained LFM use `load_params` and `BlockArtefacts`, never the paths of the items.
"""

from __future__ import annotations

import os
import warnings
import zlib

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lfm_jax import checkpoint
from lfm_jax import logging as log_lib
from lfm_jax.files import DamagedFileError

ITEMS = ("params", "train_pushed", "val_pushed", "report")


def artefacts_dir(workdir: str, n: int) -> str:
    """Folder of block n's artefacts (versions of the composite)."""
    return os.path.join(os.fspath(workdir), "blocks", str(int(n)), "artefacts")


def _crc32(tree) -> int:
    crc = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        crc = zlib.crc32(np.ascontiguousarray(leaf).view(np.uint8), crc)
    return crc


def _check_shape(array, shape, what):
    array = np.asarray(array)
    if len(shape) != array.ndim or any(s is not None and s != a
                                       for s, a in zip(shape, array.shape)):
        raise DamagedFileError(f"{what}: expected shape {tuple(shape)}, got {array.shape}")
    return array


class BlockArtefacts:
    """Block n's artefacts (see the module docstring); use as a context manager.

    Args:
      workdir, n: the LFM workdir and the block (1-based).
      read_only: only read (no save, no clean-up of an unfinished version, a damaged
        version is not moved); for readers of a trained LFM.
    """

    def __init__(self, workdir: str, n: int, *, read_only: bool = False):
        self.directory = artefacts_dir(workdir, n)
        self.read_only = read_only
        self._manager = None
        if not (read_only and not os.path.isdir(self.directory)):
            self._manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=not read_only, read_only=read_only,
                    enable_async_checkpointing=False,
                    cleanup_tmp_directories=not read_only))
        self._held = {}  # name -> raw item (restored, or saved by this object)
        self._version, self._present = None, set()
        self._open_latest()

    def __enter__(self) -> "BlockArtefacts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    # ------------------------------------------------------------------ loaders

    def params(self, template=None, *, recover: bool = False):
        """{"params", "ema_params"} with the structure of `template` (one block's
        network params; host arrays; without a template, the nested dicts as saved),
        or None if not saved (or damaged, with recover)."""
        pair = {"params": template, "ema_params": template}

        def check(raw, where):
            if template is None:
                return raw
            try:
                tree = flax.serialization.from_state_dict(pair, raw)
            except Exception as e:  # noqa: BLE001 - any mismatch of the structure
                raise DamagedFileError(f"{where}: params do not match the network: "
                                       f"{type(e).__name__}: {e}") from e
            for got, want in zip(jax.tree_util.tree_leaves(tree),
                                 jax.tree_util.tree_leaves(pair)):
                if np.shape(got) != np.shape(want):
                    raise DamagedFileError(f"{where}: a params leaf has shape "
                                           f"{np.shape(got)}, expected {np.shape(want)}")
            return tree

        return self._load("params", check, recover)

    def train_pushed(self, shape=None, *, recover: bool = False):
        """The training rows pushed through the block (shape checked if given; None
        entries match anything), or None."""
        def check(raw, where):
            x = raw["x"]
            return x if shape is None else _check_shape(x, shape, where)

        return self._load("train_pushed", check, recover)

    def val_pushed(self, shape, *, recover: bool = False):
        """(x, logdet): the validation points pushed through blocks 1..n, of `shape`,
        and their cumulative log-determinant; or None."""
        def check(raw, where):
            return (_check_shape(raw["x"], shape, where),
                    _check_shape(raw["logdet"], tuple(shape[:1]), where))

        return self._load("val_pushed", check, recover)

    def report(self, *, recover: bool = False):
        """The block's report (a dict), or None."""
        def check(raw, where):
            if not isinstance(raw, dict):
                raise DamagedFileError(f"{where}: not a report: {type(raw).__name__}")
            return raw

        return self._load("report", check, recover)

    # ------------------------------------------------------------------- saving

    def save(self, *, params=None, train_pushed=None, val_pushed=None,
             report=None) -> None:
        """Write a new version holding the items held so far and the given ones
        (val_pushed: (x, logdet)); collective."""
        if self.read_only:
            raise ValueError(f"{self.directory}: opened read-only")
        for name in sorted(self._present - set(self._held)):  # carried over
            self._load(name, lambda raw, where: raw, recover=True)
        new = {"params": params, "train_pushed": train_pushed, "val_pushed": val_pushed,
               "report": report}
        for name, value in new.items():
            if value is None:
                continue
            if name == "params":
                value = jax.tree_util.tree_map(
                    np.asarray, flax.serialization.to_state_dict(jax.device_get(value)))
            elif name == "train_pushed":
                value = {"x": np.asarray(value)}
            elif name == "val_pushed":
                value = {"x": np.asarray(value[0]), "logdet": np.asarray(value[1])}
            else:
                value = log_lib.to_python(value)
            self._held[name] = value
        args = {}
        for name, value in self._held.items():
            if name == "report":
                args[name] = ocp.args.JsonSave(value)
            else:
                args[name] = ocp.args.StandardSave(
                    value, custom_metadata={"crc32": _crc32(value)})
        steps = self._manager.all_steps()
        version = max(steps, default=0) + 1
        self._manager.save(version, args=ocp.args.Composite(**args), force=True)
        self._manager.wait_until_finished()
        self._version, self._present = version, set(self._held)

    # ---------------------------------------------------------------- internals

    def _open_latest(self) -> None:
        self._version = None if self._manager is None else self._manager.latest_step()
        self._present = set()
        if self._version is not None:
            path = os.path.join(self.directory, str(self._version))
            self._present = {name for name in ITEMS
                             if os.path.isdir(os.path.join(path, name))}

    def _where(self, name) -> str:
        return os.path.join(self.directory, str(self._version), name)

    def _restore(self, name):
        restore = (ocp.args.JsonRestore() if name == "report"
                   else ocp.args.StandardRestore())
        raw = self._manager.restore(self._version,
                                    args=ocp.args.Composite(**{name: restore}))[name]
        if name != "report":
            meta = ocp.StandardCheckpointHandler().metadata(epath.Path(self._where(name)))
            want = (meta.custom_metadata or {}).get("crc32")
            got = _crc32(raw)
            if want != got:
                raise DamagedFileError(f"CRC-32 of the arrays {got}, saved {want}")
        return raw

    def _load(self, name, check, recover):
        where = self._where(name) if self._version is not None else self.directory
        try:
            if name not in self._held:
                if name not in self._present:
                    return None
                self._held[name] = self._restore(name)
            return check(self._held[name], where)
        except Exception as e:  # noqa: BLE001 - any read error means damaged
            self._held.pop(name, None)
            message = str(e) if str(e).startswith(where) else (
                f"{where}: damaged ({type(e).__name__}: {str(e)[:300]})")
            if not recover:
                raise DamagedFileError(message) from e
            self._set_aside(name, message)
            return None

    def _set_aside(self, name, message) -> None:
        """Warn about the damaged item; keep the version's intact items in memory and
        move the version aside (once)."""
        if name not in self._present:  # its version is already set aside
            warnings.warn(f"{message}; recomputing it", RuntimeWarning, stacklevel=4)
            return
        self._present.discard(name)
        for other in sorted(self._present - set(self._held)):
            try:
                self._held[other] = self._restore(other)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"{self._where(other)}: damaged ({type(e).__name__}: "
                              f"{str(e)[:300]}); recomputing it", RuntimeWarning,
                              stacklevel=4)
        path = os.path.join(self.directory, str(self._version))
        moved = checkpoint.set_aside(path)
        self._manager.reload()
        warnings.warn(f"{message}; moved {path} to {moved} and recomputing it",
                      RuntimeWarning, stacklevel=4)
        self._present = set()  # from now on, only what this object holds is saved


def load_params(workdir: str, n: int, template) -> dict:
    """{"params", "ema_params"} of block n of the LFM trained in workdir (structure
    of template). Raises FileNotFoundError if the block has none, or
    `files.DamagedFileError` naming the damaged (or mismatched) item."""
    with BlockArtefacts(workdir, n, read_only=True) as store:
        saved = store.params(template)
    if saved is None:
        raise FileNotFoundError(f"{artefacts_dir(workdir, n)}: no saved params")
    return saved
