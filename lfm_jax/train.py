"""Training: immutable train state, optimiser factory, jitted (fused) step factory.

`make_train_step(loss_fn, optimizer, ...)` turns any batch-level loss
`loss_fn(params, key, batch) -> (loss, aux)` into ONE jitted pure function
`step(state, data) -> (state, metrics)` that runs `steps_per_call` optimisation
steps fused with `lax.scan`. Per-step randomness is
`jax.random.fold_in(state.key, state.step)`, so step k draws the same numbers
whether or not the run was interrupted before it.

Two ways to feed data:
- `sample_batch(key, data) -> batch` given: `data` is the whole (replicated) dataset
  on device and each step draws its batch on device; no host round trip.
- `sample_batch=None`: `data` is a batch pytree with leading axes
  (steps_per_call, batch, ...), one batch per fused step, sharded on the batch axis;
  `fit` takes it as a fixed pytree or as a callable `data(step)` giving the batches
  of the call that starts at `step` (`HostBatches`: each process feeds only its rows
  of every batch, so the data set never has to fit on a device).
Batches are sharded over the mesh's "data" axis; the state is replicated.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from lfm_jax import distributed


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params, opt_state, ema_params: pytrees; key: PRNG key."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    ema_params: Any
    key: jnp.ndarray


def create_train_state(key, params, optimizer, mesh=None) -> TrainState:
    """A fresh state at step 0 (EMA starts at the initial params).

    With `mesh`, the state is replicated on it, as the jitted step returns it; pass
    the same mesh as to `make_train_step` so that the first call and every later
    one see the same input shardings (no second compilation).
    """
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params),
                       ema_params=jax.tree_util.tree_map(jnp.copy, params),
                       key=jnp.asarray(key))
    return state if mesh is None else distributed.replicate(state, mesh)


SCHEDULES = ("constant", "cosine", "linear", "step")


def make_schedule(lr: float = 1e-3, schedule: str = "constant", warmup_steps: int = 0,
                  total_steps: int = 1, end_lr_factor: float = 0.0, *,
                  decay_rate: float = 1.0, decay_every: int = 0):
    """optax learning-rate schedule eta(k) of the update count k = 0, 1, ...

    After `warmup_steps` of linear warm-up from 0 to lr (none if 0), with
    k' = k - warmup_steps and T = max(total_steps - warmup_steps, 1):
      "constant": lr;
      "cosine":   lr (f + (1 - f) (1 + cos(pi min(k', T) / T)) / 2), f = end_lr_factor
                  (with warm-up: optax.warmup_cosine_decay_schedule);
      "linear":   lr + (lr f - lr) min(k', T) / T;
      "step":     lr * decay_rate ** floor(k' / decay_every) (optax.exponential_decay
                  with staircase=True), the official LFM runs' torch StepLR stepped
                  once per batch (e.g. decay_rate=0.99, decay_every=1000).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if schedule == "step" and (int(decay_every) < 1 or not decay_rate > 0):
        raise ValueError(f"schedule 'step' needs decay_every >= 1 and decay_rate > 0, got "
                         f"decay_every={decay_every}, decay_rate={decay_rate}")
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine" and warmup_steps > 0:
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps,
                                                  warmup_steps + decay_steps,
                                                  end_value=lr * end_lr_factor)
    if schedule == "constant":
        main = optax.constant_schedule(lr)
    elif schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_factor)
    elif schedule == "linear":
        main = optax.linear_schedule(lr, lr * end_lr_factor, decay_steps)
    else:
        main = optax.exponential_decay(lr, transition_steps=int(decay_every),
                                       decay_rate=decay_rate, staircase=True)
    if warmup_steps > 0:
        warm = optax.linear_schedule(0.0, lr, warmup_steps)
        return optax.join_schedules([warm, main], [warmup_steps])
    return main


def make_optimizer(lr: float | Callable = 1e-3, schedule: str = "constant",
                   warmup_steps: int = 0,
                   total_steps: int = 1, grad_clip: float = 0.0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, end_lr_factor: float = 0.0, *,
                   decay_rate: float = 1.0, decay_every: int = 0, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """Adam (AdamW if weight_decay > 0) with the lr schedule of `make_schedule`, or
    with `lr` itself when it is already a schedule (a callable step -> lr; then
    schedule, warmup_steps, total_steps, end_lr_factor, decay_rate and decay_every
    are not used).

    grad_clip > 0 clips the global gradient norm first; grad_clip = 0 applies no
    clipping. With the defaults (grad_clip=0, weight_decay=0, b1=0.9, b2=0.999,
    eps=1e-8) this is plain Adam, the same update as torch.optim.Adam's defaults (the
    official LFM optimiser, with schedule="step").
    """
    sched = lr if callable(lr) else make_schedule(
        lr, schedule, warmup_steps, total_steps, end_lr_factor, decay_rate=decay_rate,
        decay_every=decay_every)
    parts = []
    if grad_clip and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay:
        parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(sched, b1=b1, b2=b2, eps=eps))
    return optax.chain(*parts)


def ema_decay_at(step, decay: float):
    """Warmed-up EMA decay d_k = min(d, (1 + k) / (10 + k)) at step k (0-based: the
    step that produces params p_{k+1}); docs/maths.md section 6.

    Early on the average forgets the random initialisation quickly (d_0 = 0.1,
    d_90 = 0.92), and reaches the constant d after k = (10 d - 1) / (1 - d) steps
    (8,991 for d = 0.999). `step` may be traced; float32 result.
    """
    k = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + k) / (10.0 + k))


def ema_update(ema, params, step, decay: float):
    """e <- d_k e + (1 - d_k) p with d_k = `ema_decay_at(step, decay)`; decay 0
    gives e = p."""
    d = ema_decay_at(step, decay)
    return jax.tree_util.tree_map(
        lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def all_finite(tree) -> jnp.ndarray:
    """Scalar bool: every inexact leaf of `tree` is finite (integer leaves ignored)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    sample_batch: Callable | None = None, steps_per_call: int = 1,
                    ema_decay: float = 0.999, mesh=None, donate: bool = True,
                    unroll: int | bool = 1, loss_takes_step: bool = False,
                    prepare_batch: Callable | None = None,
                    loss_takes_context: bool = False):
    """Jitted `step(state, data) -> (state, metrics)` running `steps_per_call` steps.

    Args:
      loss_fn: (params, key, batch) -> (scalar loss, aux dict of scalars).
      optimizer: optax transformation.
      sample_batch: optional (key, data) -> batch drawn on device.
      prepare_batch: optional (key, fed batch) -> batch, applied on device to each
        fed batch when sample_batch is None (e.g. dequantising uint8 images that
        `HostBatches` feeds); the key is the step's batch key.
      steps_per_call: optimisation steps fused per compiled call (lax.scan).
      ema_decay: EMA decay d of params, in [0, 1), warmed up as
        d_k = min(d, (1 + k) / (10 + k)) at step k (`ema_update`; 0: ema = params).
      mesh: device mesh (default: all devices on one "data" axis).
      loss_takes_step: call `loss_fn(params, key, batch, step)` with the (traced)
        step number, for curricula such as an annealed (s, t) window.
      unroll: `lax.scan` unroll factor for the fused steps (True: fully unrolled;
        can help XLA:CPU, costs compile time).
      loss_takes_context: the step is `step(state, data, context)`, context a pytree
        (replicated like the state, e.g. a frozen teacher's params) passed to loss_fn
        as its last argument, `loss_fn(params, key, batch[, step], context)`: an
        argument of the compiled step, not a constant baked into it, so one
        compilation serves every context of the same shapes.
    Returns:
      step(state, data) (step(state, data, context) with loss_takes_context); metrics
      is a dict of arrays of shape (steps_per_call,),
      with 'loss', 'grad_norm', 'state_finite' (bool: the updated params and
      optimiser state are all finite; read by `fit`) plus loss_fn's aux entries.
    """
    if not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    mesh = distributed.make_mesh() if mesh is None else mesh
    batch_spec = NamedSharding(mesh, P(distributed.DATA_AXIS))
    repl = distributed.replicated(mesh)

    def one_step(state: TrainState, batch_or_data, context=None):
        key = jax.random.fold_in(state.key, state.step)
        batch_key, loss_key = jax.random.split(key)
        if sample_batch is not None:
            batch = sample_batch(batch_key, batch_or_data)
        elif prepare_batch is not None:
            batch = prepare_batch(batch_key, batch_or_data)
        else:
            batch = batch_or_data
        batch = jax.lax.with_sharding_constraint(batch, batch_spec)
        extra = (state.step,) if loss_takes_step else ()
        if loss_takes_context:
            extra = extra + (context,)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, loss_key, batch, *extra)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        new_state = state.replace(step=state.step + 1, params=params,
                                  opt_state=opt_state, ema_params=ema)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux,
                   "state_finite": all_finite((params, opt_state))}
        return new_state, metrics

    def scan_steps(state, data, context):
        if sample_batch is not None:
            return jax.lax.scan(lambda s, _: one_step(s, data, context), state, None,
                                length=steps_per_call, unroll=unroll)
        return jax.lax.scan(lambda s, b: one_step(s, b, context), state, data,
                            unroll=unroll)

    def multi_step(state, data):
        return scan_steps(state, data, None)

    def multi_step_with_context(state, data, context):
        return scan_steps(state, data, context)

    data_sharding = repl if sample_batch is not None else NamedSharding(
        mesh, P(None, distributed.DATA_AXIS))
    if loss_takes_context:
        return jax.jit(multi_step_with_context, in_shardings=(repl, data_sharding, repl),
                       out_shardings=(repl, repl), donate_argnums=(0,) if donate else ())
    return jax.jit(multi_step, in_shardings=(repl, data_sharding),
                   out_shardings=(repl, repl),
                   donate_argnums=(0,) if donate else ())


class NonFiniteLossError(FloatingPointError):
    """Raised when training produces a NaN or infinite loss (or non-finite params)."""


def check_finite(metrics, step: int) -> None:
    """Raise NonFiniteLossError naming the first bad step of a call ending at `step`.

    Checks metrics["loss"] and, when present, metrics["state_finite"] (the updated
    params / optimiser state of each step are all finite).
    """
    loss = np.asarray(distributed.to_host(metrics["loss"]))
    bad = ~np.isfinite(loss)
    if bad.any():
        i = int(np.argmax(bad))
        raise NonFiniteLossError(f"loss became {loss[i]} at step {step - len(loss) + i + 1}")
    if "state_finite" in metrics:
        ok = np.asarray(distributed.to_host(metrics["state_finite"]), bool)
        if not ok.all():
            i = int(np.argmax(~ok))
            raise NonFiniteLossError(
                f"parameters or optimiser state became NaN/Inf at step {step - len(ok) + i + 1}")


def _copy(tree):
    return jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, tree)


class KeepBest:
    """Keeps the train state's parameters of the lowest validation loss seen.

    The validation loss is the training loss itself, `loss_fn(params, key, batch)[0]`,
    on ONE fixed validation batch with ONE fixed key (so it is a deterministic function
    of the params and two evaluations are comparable), of `state.ema_params` if
    `use_ema` else `state.params`. `update(step, state)` (called by `fit` after every
    fused call, before the next call may donate the state) evaluates it and, when it
    is strictly lower than the best so far, copies params and ema_params to the host.
    It costs one forward pass on the batch and one host sync per call.

    Attributes after updates: best_loss (inf before any), best_step (None before any),
    params, ema_params (host pytrees of the best state, None before any), history
    (list of (step, validation loss)).
    """

    def __init__(self, loss_fn: Callable, batch, key, *, use_ema: bool = True):
        self.use_ema = bool(use_ema)
        self._loss = jax.jit(lambda p: loss_fn(p, key, batch)[0])
        self.best_loss, self.best_step = float("inf"), None
        self.params = self.ema_params = None
        self.history = []

    def validation_loss(self, params) -> float:
        """The loss of params on the fixed validation batch and key (a host float)."""
        return float(self._loss(params))

    def update(self, step: int, state: TrainState) -> bool:
        """Score `state` (at `step`); returns True when it is the new best."""
        loss = self.validation_loss(state.ema_params if self.use_ema else state.params)
        self.history.append((int(step), loss))
        if not loss < self.best_loss:  # NaN never wins
            return False
        self.best_loss, self.best_step = loss, int(step)
        self.params, self.ema_params = jax.device_get((state.params, state.ema_params))
        return True

    def apply(self, state: TrainState) -> TrainState:
        """`state` with params and ema_params replaced by the best ones (unchanged if
        nothing was scored)."""
        if self.best_step is None:
            return state
        return state.replace(params=self.params, ema_params=self.ema_params)


def fit(state: TrainState, step_fn, data, num_steps: int, *, steps_per_call: int = 1,
        callback: Callable | None = None, checkpointer=None, progress=None,
        keep_best: KeepBest | None = None):
    """Host loop: run `step_fn` until `state.step == num_steps`.

    Every checkpoint this writes holds parameters that produced a finite loss: a
    state due for saving after call k is copied on device and written only once
    the losses of call k + 1 (the first of which is computed from those very
    parameters) are checked finite; the final state is saved only if its params
    and optimiser state are finite (metrics["state_finite"]). Otherwise metrics are
    read one call late, so the device never waits for the host between saves.

    On a non-finite loss the pending save is dropped, the saves in flight are
    finished, and `NonFiniteLossError` says which checkpoint was kept (step and
    folder) and how to continue (lower lr, same command). On any other error the
    saves in flight are finished too, so no `*.orbax-checkpoint-tmp` is left behind.

    Args:
      callback: optional f(step, metrics_host) called for every completed call.
      checkpointer: optional `lfm_jax.checkpoint.Checkpointer`; saves on its
        interval (checked after each call) and at the end.
      progress: optional `lfm_jax.logging.Progress`.
      keep_best: optional `KeepBest`, updated after every call (the train state that
        comes back is still the last one: apply `keep_best.apply(state)`). It is not
        checkpointed: after a resume it only knows the steps run since.
    Returns:
      (state, history) with history a dict of lists (step, loss, time).
    """
    history = {"step": [], "loss": [], "time": []}
    start_step = int(state.step)
    remaining = num_steps - start_step
    if remaining <= 0:
        return state, history
    if remaining % steps_per_call:
        raise ValueError(f"steps to run ({remaining}) must be a multiple of steps_per_call "
                         f"({steps_per_call})")
    t0 = time.perf_counter()

    def consume(item):
        step_end, metrics = item
        metrics = distributed.to_host(metrics)
        check_finite(metrics, step_end)
        loss = metrics["loss"]
        for i, l in enumerate(loss):
            history["step"].append(step_end - len(loss) + i + 1)
            history["loss"].append(float(l))
            history["time"].append(time.perf_counter() - t0)
        if callback is not None:
            callback(step_end, metrics)
        if progress is not None:
            progress.update(step_end, float(loss[-1]))

    pending = None   # (step, metrics) of the last call, not yet checked
    to_save = None   # (step, state copy) saved once the next call's losses are finite
    step = start_step
    try:
        while step < num_steps:
            state, metrics = step_fn(state, data(step) if callable(data) else data)
            step += steps_per_call
            if keep_best is not None:
                keep_best.update(step, state)
            if pending is not None:
                consume(pending)
            pending = (step, metrics)
            if to_save is not None:
                pending = (step, distributed.to_host(metrics))
                check_finite(pending[1], step)
                checkpointer.save(*to_save)
                to_save = None
                consume(pending)
                pending = None
            if (checkpointer is not None and step < num_steps
                    and checkpointer.should_save(step)):
                to_save = (step, _copy(state))
        if pending is not None:
            consume(pending)
        if checkpointer is not None:
            checkpointer.save(num_steps, state, force=True)
            checkpointer.wait()
    except NonFiniteLossError as e:
        to_save = None
        raise NonFiniteLossError(f"{e}; stopped. {_kept_message(checkpointer)}") from None
    finally:
        if checkpointer is not None:
            checkpointer.wait()
    return state, history


def _kept_message(checkpointer) -> str:
    advice = ("lower the learning rate (train.lr), or enable train.grad_clip, or check the "
              "data, and run the same command again")
    if checkpointer is None:
        return f"No checkpointer: nothing was saved. To continue, {advice}."
    checkpointer.wait()
    kept = checkpointer.latest_step()
    if kept is None:
        return (f"No checkpoint was kept in {checkpointer.directory}; to start over from "
                f"step 0, {advice}.")
    return (f"Kept checkpoint: step {kept} in {checkpointer.step_path(kept)} (its "
            f"parameters gave a finite loss). To continue, {advice}: it resumes from "
            f"step {kept}.")


class HostBatches:
    """Batches fed from host memory, each process feeding only its rows.

    `HostBatches(arrays, batch_size, steps_per_call, seed, mesh)(step)` gives the
    batches of the fused call that starts at `step`: a pytree with leading axes
    (steps_per_call, batch_size, ...), sharded on the batch axis over the mesh, built
    with `jax.make_array_from_process_local_data` from this process's rows. The rows
    of step k are `np.random.default_rng([seed, k]).integers(0, n, batch_size)` (with
    replacement, as the on-device sampler), the same on every process, and process p
    takes the p-th of process_count equal slices of them. So the batches depend on
    (seed, step) only: a resumed run, and a run on another number of processes or
    devices, sees the same global batches. `arrays` (a pytree of arrays with a common
    leading axis n) stays on the host; use this where the data set is too large to
    replicate on every device (config.data.placement = "host").
    """

    def __init__(self, arrays, batch_size: int, steps_per_call: int, seed: int, mesh):
        leaves = jax.tree_util.tree_leaves(arrays)
        if not leaves:
            raise ValueError("HostBatches needs at least one array")
        self.n = int(np.shape(leaves[0])[0])
        if any(np.shape(x)[0] != self.n for x in leaves):
            raise ValueError("HostBatches: arrays differ in their number of rows: "
                             f"{[np.shape(x)[0] for x in leaves]}")
        procs = jax.process_count()
        if batch_size % procs:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the number "
                             f"of processes ({procs})")
        distributed.check_batch_size(batch_size, mesh)
        self.arrays = jax.tree_util.tree_map(np.asarray, arrays)
        self.batch_size, self.steps_per_call = int(batch_size), int(steps_per_call)
        self.seed, self.mesh = int(seed), mesh
        local = self.batch_size // procs
        self._rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

    def indices(self, step: int) -> np.ndarray:
        """(steps_per_call, local batch) row indices of this process for the call at step."""
        return np.stack([np.random.default_rng([self.seed, step + i]).integers(
            0, self.n, self.batch_size)[self._rows] for i in range(self.steps_per_call)])

    def __call__(self, step: int):
        idx = self.indices(int(step))
        local = jax.tree_util.tree_map(lambda x: x[idx], self.arrays)
        return distributed.shard_batch(local, self.mesh, batch_axis=1)
