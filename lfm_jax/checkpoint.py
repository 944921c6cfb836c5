"""Checkpoints with orbax: save every N steps and at the end, keep the last K,
restore the newest intact one on start.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a run killed at any moment leaves only whole checkpoints behind; restoring the
latest one and re-running the same command continues with exactly the losses an
uninterrupted run would have had (batches and noise are functions of
(state.key, state.step)).

A checkpoint damaged after it was written (a truncated or deleted file) cannot be
restored: `Checkpointer.restore` then warns with the damaged path, renames the folder
to `<step>.damaged` (orbax ignores it; nothing is deleted) and falls back to the next
newest checkpoint.

Saves are asynchronous. Use the checkpointer as a context manager (or call `close`
in a `finally`), so that a save in flight is finished on any error instead of being
left as `<step>.orbax-checkpoint-tmp` at interpreter exit.

Interval policy: orbax's `save_interval_steps` saves when `step % interval == 0`,
which never fires when the fused-call length does not divide the interval; the
rule here is "the first step past each multiple of save_every" (`should_save`).
"""

from __future__ import annotations

import os
import warnings

import jax
import orbax.checkpoint as ocp

DAMAGED_SUFFIX = ".damaged"


class CheckpointError(RuntimeError):
    """No checkpoint in a non-empty directory could be restored."""


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for a pytree train state.

    Args:
      directory: checkpoint folder (created if missing).
      save_every: `should_save(step)` is true for the first step at or past each
        multiple of save_every (<= 0: never; `save(..., force=True)` still saves).
      keep: number of newest checkpoints kept (>= 1).
      async_save: write in a background thread (the device-to-host copy is done
        before `save` returns, so the saved state may be donated afterwards).
    """

    def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3,
                 async_save: bool = True):
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = int(save_every)
        self._last_saved = None
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_path(self, step: int) -> str:
        """Folder of the checkpoint of `step`."""
        return os.path.join(self.directory, str(int(step)))

    def should_save(self, step: int) -> bool:
        if self.save_every <= 0:
            return False
        last = self._last_saved if self._last_saved is not None else (
            self.latest_step() or 0)
        return step // self.save_every > last // self.save_every

    def save(self, step: int, state, force: bool = False) -> bool:
        """Save `state` at `step` (no-op if that step is already saved)."""
        step = int(step)
        if step in self.manager.all_steps():
            return False
        saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._last_saved = step
        return saved

    def restore(self, target, step: int | None = None):
        """Restore into the structure, shapes, dtypes and shardings of `target`.

        Without `step`, tries the checkpoints newest first: one that fails to restore
        (a truncated, missing or corrupt file) is renamed `<step>.damaged` with a
        warning naming it, and the next older one is tried.

        Returns `target` unchanged when the directory holds no checkpoint.
        Raises:
          CheckpointError: checkpoints exist but none could be restored (the message
            names each damaged folder), or the requested `step` failed.
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        if step is not None:
            try:
                restored = self._restore_step(int(step), abstract)
            except Exception as e:  # noqa: BLE001 - reported with the path
                raise CheckpointError(f"cannot restore checkpoint {self.step_path(step)}: "
                                      f"{type(e).__name__}: {e}") from e
            self._last_saved = int(step)
            return restored
        failures = []
        for s in reversed(self.all_steps()):
            try:
                restored = self._restore_step(s, abstract)
            except Exception as e:  # noqa: BLE001 - any read error means damaged
                path = self.step_path(s)
                moved = path + DAMAGED_SUFFIX
                failures.append(f"{path} ({type(e).__name__}: {str(e)[:200]})")
                warnings.warn(f"checkpoint {path} is damaged ({type(e).__name__}: "
                              f"{str(e)[:200]}); moved to {moved}, trying the previous "
                              "one", RuntimeWarning, stacklevel=2)
                self._set_aside(path, moved)
                continue
            self._last_saved = s
            return restored
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be restored: "
                + "; ".join(failures) + ". Delete the folder to start from step 0.")
        return target

    def _restore_step(self, step: int, abstract):
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def _set_aside(self, path: str, moved: str) -> None:
        if jax.process_index() == 0 and os.path.isdir(path):
            i = 0
            while os.path.exists(moved if i == 0 else f"{moved}.{i}"):
                i += 1
            os.replace(path, moved if i == 0 else f"{moved}.{i}")
        self.manager.reload()

    def wait(self) -> None:
        """Block until every save in flight is written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish the saves in flight and release orbax's threads (idempotent)."""
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def latest_step(directory: str) -> int | None:
    """Newest step saved in `directory` (None if none), without keeping a manager."""
    with Checkpointer(directory) as ckpt:
        return ckpt.latest_step()
