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
  (steps_per_call, batch, ...), one batch per fused step, sharded on the batch axis.
Batches are sharded over the mesh's "data" axis; the state is replicated.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
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


def make_optimizer(lr: float = 1e-3, schedule: str = "constant", warmup_steps: int = 0,
                   total_steps: int = 1, grad_clip: float = 0.0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, end_lr_factor: float = 0.0, *,
                   decay_rate: float = 1.0, decay_every: int = 0, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """Adam (AdamW if weight_decay > 0) with the lr schedule of `make_schedule`.

    grad_clip > 0 clips the global gradient norm first; grad_clip = 0 applies no
    clipping. With the defaults (grad_clip=0, weight_decay=0, b1=0.9, b2=0.999,
    eps=1e-8) this is plain Adam, the same update as torch.optim.Adam's defaults (the
    official LFM optimiser, with schedule="step").
    """
    sched = make_schedule(lr, schedule, warmup_steps, total_steps, end_lr_factor,
                          decay_rate=decay_rate, decay_every=decay_every)
    parts = []
    if grad_clip and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay:
        parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(sched, b1=b1, b2=b2, eps=eps))
    return optax.chain(*parts)


def _ema_update(ema, params, decay):
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    sample_batch: Callable | None = None, steps_per_call: int = 1,
                    ema_decay: float = 0.999, mesh=None, donate: bool = True,
                    unroll: int | bool = 1, loss_takes_step: bool = False):
    """Jitted `step(state, data) -> (state, metrics)` running `steps_per_call` steps.

    Args:
      loss_fn: (params, key, batch) -> (scalar loss, aux dict of scalars).
      optimizer: optax transformation.
      sample_batch: optional (key, data) -> batch drawn on device.
      steps_per_call: optimisation steps fused per compiled call (lax.scan).
      ema_decay: EMA of params (0 disables averaging: ema = params).
      mesh: device mesh (default: all devices on one "data" axis).
      loss_takes_step: call `loss_fn(params, key, batch, step)` with the (traced)
        step number, for curricula such as an annealed (s, t) window.
      unroll: `lax.scan` unroll factor for the fused steps (True: fully unrolled;
        can help XLA:CPU, costs compile time).
    Returns:
      step(state, data); metrics is a dict of arrays of shape (steps_per_call,),
      with 'loss' and 'grad_norm' plus loss_fn's aux entries.
    """
    mesh = distributed.make_mesh() if mesh is None else mesh
    batch_spec = NamedSharding(mesh, P(distributed.DATA_AXIS))
    repl = distributed.replicated(mesh)

    def one_step(state: TrainState, batch_or_data):
        key = jax.random.fold_in(state.key, state.step)
        batch_key, loss_key = jax.random.split(key)
        if sample_batch is not None:
            batch = sample_batch(batch_key, batch_or_data)
        else:
            batch = batch_or_data
        batch = jax.lax.with_sharding_constraint(batch, batch_spec)
        extra = (state.step,) if loss_takes_step else ()
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, loss_key, batch, *extra)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = _ema_update(state.ema_params, params, ema_decay)
        new_state = state.replace(step=state.step + 1, params=params,
                                  opt_state=opt_state, ema_params=ema)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
        return new_state, metrics

    def multi_step(state, data):
        if sample_batch is not None:
            return jax.lax.scan(lambda s, _: one_step(s, data), state, None,
                                length=steps_per_call, unroll=unroll)
        return jax.lax.scan(one_step, state, data, unroll=unroll)

    data_sharding = repl if sample_batch is not None else NamedSharding(
        mesh, P(None, distributed.DATA_AXIS))
    return jax.jit(multi_step, in_shardings=(repl, data_sharding),
                   out_shardings=(repl, repl),
                   donate_argnums=(0,) if donate else ())


class NonFiniteLossError(FloatingPointError):
    """Raised when training produces a NaN or infinite loss."""


def check_finite(metrics, step: int) -> None:
    """Raise NonFiniteLossError naming the first step whose loss is not finite."""
    loss = distributed.to_host(metrics["loss"])
    bad = ~jnp.isfinite(loss)
    if bool(bad.any()):
        first = int(step - len(loss) + int(jnp.argmax(bad)) + 1)
        raise NonFiniteLossError(
            f"loss became {loss[int(jnp.argmax(bad))]} at step {first}; stopping. The last "
            "good checkpoint is kept; lower the learning rate, enable grad_clip, or check "
            "the data.")


def fit(state: TrainState, step_fn, data, num_steps: int, *, steps_per_call: int = 1,
        callback: Callable | None = None, checkpointer=None, progress=None):
    """Host loop: run `step_fn` until `state.step == num_steps`.

    Metrics are read one call late so the device never waits for the host, except
    before a checkpoint is written (a NaN must never be saved). A non-finite loss
    raises `NonFiniteLossError` and leaves the last good checkpoint in place.

    Args:
      callback: optional f(step, metrics_host) called for every completed call.
      checkpointer: optional `lfm_jax.checkpoint.Checkpointer`; saves on its
        interval (checked after each call) and at the end.
      progress: optional `lfm_jax.logging.Progress`.
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
    pending = None
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

    step = start_step
    while step < num_steps:
        state, metrics = step_fn(state, data)
        step += steps_per_call
        if pending is not None:
            consume(pending)
        pending = (step, metrics)
        if checkpointer is not None and checkpointer.should_save(step):
            consume(pending)
            pending = None
            checkpointer.save(step, state)
    if pending is not None:
        consume(pending)
    if checkpointer is not None:
        checkpointer.save(num_steps, state, force=True)
        checkpointer.wait()
    return state, history
