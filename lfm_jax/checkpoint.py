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

Interval policy: orbax's `save_interval_steps` (`FixedIntervalPolicy`) saves when
`step % interval == 0`, which never fires when the fused-call length does not divide
the interval; the manager here decides with orbax's save-decision protocol and
`PastMultiplePolicy`, "the first step at or past each multiple of save_every", plus
orbax's `PreemptionCheckpointingPolicy` (a save at a preemption sync point of a
multi-host job), as orbax's own default does (`Checkpointer.should_save`).

`set_aside(path)` is the rename to `<path>.damaged` (numbered if taken) that every
process of a multi-process run waits for, also used for the LFM block artefacts
(`runs.block_store`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import orbax.checkpoint as ocp

DAMAGED_SUFFIX = ".damaged"


@dataclasses.dataclass
class PastMultiplePolicy(ocp.checkpoint_managers.SaveDecisionPolicy):
    """Orbax save-decision policy: save at the first step at or past each multiple of
    `interval` since the newest checkpoint (none: since step 0); interval <= 0 never
    saves. Unlike `FixedIntervalPolicy` (`step % interval == 0`), it fires when the
    steps advance in fused calls whose length does not divide the interval."""

    interval: int

    def should_save(self, step, previous_steps, *, context) -> bool:
        del context
        if self.interval <= 0:
            return False
        last = max((s.step for s in previous_steps), default=0)
        return step.step // self.interval > last // self.interval


def set_aside(path: str) -> str | None:
    """Rename `path` to `<path>.damaged` (`.damaged.1`, ... if taken) on process 0,
    between two barriers of all processes (none reads it while it moves, all see it
    moved afterwards). Returns the new name (None if there was nothing to move)."""
    moved, i = path + DAMAGED_SUFFIX, 0
    while os.path.exists(moved if i == 0 else f"{moved}.{i}"):
        i += 1
    moved = moved if i == 0 else f"{moved}.{i}"
    exists = os.path.exists(path)
    _barrier("lfm_jax:set_aside:before")
    if jax.process_index() == 0 and exists:
        os.replace(path, moved)
    _barrier("lfm_jax:set_aside:after")
    return moved if exists else None


_barriers = [0]  # every process passes the same barriers in the same order


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        _barriers[0] += 1
        ocp.multihost.sync_global_processes(f"{name}:{_barriers[0]}")


class CheckpointError(RuntimeError):
    """No checkpoint in a non-empty directory could be restored."""


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for a pytree train state.

    Args:
      directory: checkpoint folder (created if missing).
      save_every: `should_save(step)` is true for the first step at or past each
        multiple of save_every since the newest checkpoint (`PastMultiplePolicy`;
        <= 0: never; `save(..., force=True)` still saves).
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
        policies = ocp.checkpoint_managers
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            save_decision_policy=policies.AnySavePolicy([
                PastMultiplePolicy(self.save_every),
                policies.PreemptionCheckpointingPolicy()]))
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
        """Whether step is due for a checkpoint (orbax's decision with the policy
        above; false at or before the newest checkpoint)."""
        return bool(self.manager.should_save(int(step)))

    def save(self, step: int, state, force: bool = False) -> bool:
        """Save `state` at `step` (no-op if that step is already saved)."""
        step = int(step)
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

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
            return restored
        failures = []
        for s in reversed(self.all_steps()):
            try:
                restored = self._restore_step(s, abstract)
            except Exception as e:  # noqa: BLE001 - any read error means damaged
                path = self.step_path(s)
                failures.append(f"{path} ({type(e).__name__}: {str(e)[:200]})")
                moved = set_aside(path)
                self.manager.reload()
                warnings.warn(f"checkpoint {path} is damaged ({type(e).__name__}: "
                              f"{str(e)[:200]}); moved to {moved}, trying the previous "
                              "one", RuntimeWarning, stacklevel=2)
                continue
            return restored
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be restored: "
                + "; ".join(failures) + ". Delete the folder to start from step 0.")
        return target

    def _restore_step(self, step: int, abstract):
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

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
