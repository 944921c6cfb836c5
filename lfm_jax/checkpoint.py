"""Checkpoints with orbax: save every N steps and at the end, keep the last K,
restore the latest on start.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a run killed at any moment leaves only whole checkpoints behind; restoring the
latest one and re-running the same command continues with exactly the losses an
uninterrupted run would have had (batches and noise are functions of
(state.key, state.step)).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for a pytree train state."""

    def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3,
                 async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = int(save_every)
        self._last_saved = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

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

        Returns `target` unchanged when the directory holds no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return target
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        self._last_saved = step
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
