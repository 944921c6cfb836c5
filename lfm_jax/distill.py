"""Teachers, batch-level flow-map losses for the trainer, and LFM block distillation.

Teachers are velocity closures b(t, x) of ONE example:
- `velocity_teacher(network, params)`: a trained flow-matching velocity
  (`load_velocity_params` restores its params from an `lfm_jax.checkpoint` directory).
- `time_reversed(b)`: t -> -b(1 - t, x). Its flow map from 0 to 1 is the INVERSE of
  b's; an LFM block b_n (data side at t = 0, noise side at t = 1) is distilled through
  its reversed field, so the student carries noise to data, as generation needs.
- `ode_flow_map(b, num_steps)`: the teacher's flow map by fixed-step RK4, used as the
  frozen map of progressive distillation when only a velocity is given.

Batch losses `loss_fn(params, key, batch) -> (loss, aux)` for
`lfm_jax.train.make_train_step`:
- `make_distill_loss(objective, flow_map, teacher_b, ...)`, objective in
  `DISTILL_OBJECTIVES` ("lagrangian", "eulerian", "progressive", "flow_map_matching").
- `make_self_distill_loss(objective, flow_map, ...)`, objective in
  `SELF_DISTILL_OBJECTIVES` ("lagrangian", "eulerian", "progressive").
A batch is either x1 (n, ...) (data; x0 ~ N(0, I) is drawn inside) or a pair
(x0, x1) of arrays (n, ...), e.g. (x_r, x_l) for an LFM block's inverse. Distillation
points are x = I_s (the interpolant at the map's start time), which has the teacher's
marginal rho_s when the teacher was trained by flow matching on the same interpolant
and pairs.

Objectives and samplers are chosen by name here, in Python, before jit.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lfm_jax import flow_map as flow_map_lib
from lfm_jax import interpolants as interpolants_lib
from lfm_jax import losses


# ---------------------------------------------------------------------------
# Teachers.
# ---------------------------------------------------------------------------

def velocity_teacher(network, params) -> Callable:
    """b(t, x) = network.apply(params, t, x) with parameters frozen (stop-gradient)."""
    params = jax.lax.stop_gradient(params)
    return lambda t, x: network.apply(params, t, x)


def load_velocity_params(directory: str, template_state, use_ema: bool = True):
    """Restore a trained velocity's params from a `Checkpointer` directory.

    template_state: a `train.TrainState` of the same structure (e.g. a fresh
    `create_train_state(...)` of the same network and optimiser). Returns the EMA
    params (or raw params) of the latest checkpoint; raises if there is none.
    """
    from lfm_jax import checkpoint

    ckpt = checkpoint.Checkpointer(directory, async_save=False)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    state = ckpt.restore(template_state)
    return state.ema_params if use_ema else state.params


def time_reversed(b: Callable) -> Callable:
    """The reversed field t -> -b(1 - t, x): its time-0 -> 1 flow inverts b's."""
    return lambda t, x: -b(1.0 - t, x)


def _rk4_step(b, t, h, x):
    k1 = b(t, x)
    k2 = b(t + h / 2, x + (h / 2) * k1)
    k3 = b(t + h / 2, x + (h / 2) * k2)
    k4 = b(t + h, x + h * k3)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def ode_flow_map(b: Callable, num_steps: int = 8) -> Callable:
    """X(s, t, x): num_steps fixed RK4 steps of dx/dt = b(t, x) from s to t (one example).

    4 num_steps velocity calls; X(s, s, x) = x exactly; backward when t < s.
    """
    num_steps = int(num_steps)

    def X(s, t, x):
        h = (t - s) / num_steps

        def body(y, j):
            return _rk4_step(b, s + j * h, h, y), None

        y, _ = jax.lax.scan(body, x, jnp.arange(num_steps, dtype=jnp.result_type(h)))
        return y

    return X


# ---------------------------------------------------------------------------
# Batch losses.
# ---------------------------------------------------------------------------

def _pairs(key, batch):
    """(x0, x1) from a batch: x1 alone (x0 ~ N(0, I) drawn here) or a pair (x0, x1)."""
    if isinstance(batch, (tuple, list)):
        x0, x1 = batch
        return x0, x1
    return jax.random.normal(key, batch.shape, batch.dtype), batch


def _lmd(X, b, X_teacher, interp, s, t, x0, x1, k):
    x_s, _ = interpolants_lib.interpolate(interp, s, x0, x1)
    return losses.lagrangian_distillation(X, b, s, t, x_s)


def _emd(X, b, X_teacher, interp, s, t, x0, x1, k):
    x_s, _ = interpolants_lib.interpolate(interp, s, x0, x1)
    return losses.eulerian_distillation(X, b, s, t, x_s)


def _pfmm(X, b, X_teacher, interp, s, t, x0, x1, k):
    x_s, _ = interpolants_lib.interpolate(interp, s, x0, x1)
    return losses.progressive_distillation(X, X_teacher, s, t, x_s, k)


def _fmm(X, b, X_teacher, interp, s, t, x0, x1, k):
    return losses.flow_map_matching(X, interp, s, t, x0, x1)


# name -> (per-example objective, default (s, t) sampler, needs a teacher velocity)
DISTILL_OBJECTIVES = {
    "lagrangian": (_lmd, "triangle", True),
    "eulerian": (_emd, "triangle", True),
    "progressive": (_pfmm, "triangle", True),
    "flow_map_matching": (_fmm, "uniform", False),
}

def _lsd(X, interp, s, u, t, x0, x1, **kw):
    return losses.lagrangian_self_distillation(X, interp, s, t, x0, x1, **kw)


def _esd(X, interp, s, u, t, x0, x1, **kw):
    return losses.eulerian_self_distillation(X, interp, s, t, x0, x1, **kw)


def _psd(X, interp, s, u, t, x0, x1, **kw):
    return losses.progressive_self_distillation(X, interp, s, u, t, x0, x1, **kw)


# name -> per-example self-distillation loss (X, interp, s, u, t, x0, x1, **kw); u is
# used by "progressive" only.
SELF_DISTILL_OBJECTIVES = {"lagrangian": _lsd, "eulerian": _esd, "progressive": _psd}


def _intermediate_midpoint(key, s, t):
    return s + 0.5 * (t - s)


def _intermediate_uniform(key, s, t):
    return s + jax.random.uniform(key, s.shape) * (t - s)


# PSD intermediate time u in [s, t]: "midpoint" (u = (s + t) / 2) or "uniform".
INTERMEDIATE_TIMES = {"midpoint": _intermediate_midpoint, "uniform": _intermediate_uniform}


def _lookup(registry, name, what):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(registry)}")
    return registry[name]


def make_distill_loss(objective: str, flow_map: flow_map_lib.FlowMap,
                      teacher_b: Optional[Callable] = None, *, interp=None,
                      time_sampler: Optional[str] = None, sampler_kwargs=None,
                      teacher_map: Optional[Callable] = None, num_teacher_steps: int = 2,
                      teacher_substeps: int = 4) -> Callable:
    """Batch loss (params, key, batch, step=0) -> (mean loss, aux) distilling a teacher.

    Per example: weighted(objective(X, b, ...; s, t, x0, x1), lv(s, t)) with
    weighted(L, lv) = exp(-lv) L + lv (lv = 0 without a learned weighting).

    Args:
      objective: a key of `DISTILL_OBJECTIVES`.
      flow_map: the student `FlowMap`.
      teacher_b: teacher velocity b(t, x) (not needed for "flow_map_matching").
      interp: interpolant giving x = I_s (default linear).
      time_sampler: a key of `flow_map.TIME_PAIR_SAMPLERS` (default per objective:
        "uniform" square for direct matching, else "triangle").
      teacher_map: frozen map for "progressive" (default: `ode_flow_map(teacher_b,
        teacher_substeps)`, i.e. teacher_substeps RK4 steps per teacher jump).
      num_teacher_steps: k teacher jumps per progressive target.
    Note: `step` (for the annealed sampler) defaults to 0; `make_train_step(...,
      loss_takes_step=True)` passes the training step.
    """
    per_example, default_sampler, needs_teacher = _lookup(
        DISTILL_OBJECTIVES, objective, "distillation objective")
    if needs_teacher and teacher_b is None:
        raise ValueError(f"objective {objective!r} needs a teacher velocity teacher_b")
    interp = interpolants_lib.linear() if interp is None else interp
    sample_st = flow_map_lib.get_time_pair_sampler(time_sampler or default_sampler,
                                                   **(sampler_kwargs or {}))
    if objective == "progressive" and teacher_map is None:
        teacher_map = ode_flow_map(teacher_b, teacher_substeps)
    k = int(num_teacher_steps)

    def loss_fn(params, key, batch, step=0):
        k_pair, k_time = jax.random.split(key)
        x0, x1 = _pairs(k_pair, batch)
        s, t = sample_st(k_time, x1.shape[0], step)
        s, t = s.astype(x1.dtype), t.astype(x1.dtype)
        X = flow_map.bind(params)
        lv = flow_map.bind_weight(params)

        def one(s_, t_, a, c):
            value = per_example(X, teacher_b, teacher_map, interp, s_, t_, a, c, k)
            return flow_map_lib.weighted(value, lv(s_, t_)), value

        total, raw = jax.vmap(one)(s, t, x0, x1)
        return jnp.mean(total), {"unweighted": jnp.mean(raw)}

    return loss_fn


def make_self_distill_loss(objective: str, flow_map: flow_map_lib.FlowMap, *,
                           interp=None, time_sampler: str = "diagonal",
                           sampler_kwargs=None, intermediate: str = "uniform",
                           esd_stopgrad: Optional[str] = None) -> Callable:
    """Batch loss (params, key, batch, step=0) -> (mean loss, aux), no external teacher.

    Per example: `losses.<objective>_self_distillation` with the model's own velocity
    v_{t,t} (one network call) and its learned lv(s, t) if attached. Default (s, t)
    sampler: "diagonal" (75% of the batch on s = t). For "progressive", u in [s, t]
    from `INTERMEDIATE_TIMES[intermediate]`. For "eulerian", `esd_stopgrad` (None: the
    loss's default "average_velocity"; "full": gradient through d/ds X, the official
    variant, unstable on long runs) is `losses.eulerian_self_distillation(stopgrad=)`.
    aux: fraction of the batch off the diagonal.
    """
    per_example = _lookup(SELF_DISTILL_OBJECTIVES, objective, "self-distillation objective")
    interp = interpolants_lib.linear() if interp is None else interp
    sample_st = flow_map_lib.get_time_pair_sampler(time_sampler, **(sampler_kwargs or {}))
    sample_u = _lookup(INTERMEDIATE_TIMES, intermediate, "intermediate time")
    extra = {}
    if esd_stopgrad is not None:
        if objective != "eulerian":
            raise ValueError("esd_stopgrad applies to the eulerian objective only")
        extra["stopgrad"] = esd_stopgrad

    def loss_fn(params, key, batch, step=0):
        k_pair, k_time, k_u = jax.random.split(key, 3)
        x0, x1 = _pairs(k_pair, batch)
        s, t = sample_st(k_time, x1.shape[0], step)
        s, t = s.astype(x1.dtype), t.astype(x1.dtype)
        u = sample_u(k_u, s, t)
        X = flow_map.bind(params)
        b = flow_map.bind_velocity(params)
        lv = flow_map.bind_weight(params)

        def one(s_, u_, t_, a, c):
            return per_example(X, interp, s_, u_, t_, a, c, velocity=b, weight=lv, **extra)

        total = jax.vmap(one)(s, u, t, x0, x1)
        return jnp.mean(total), {"off_diagonal": jnp.mean((s != t).astype(total.dtype))}

    return loss_fn


# Full objective names (those of `lfm_jax.losses`, used by configs) ->
# (factory, short name, needs a teacher velocity).
OBJECTIVES = {
    "lagrangian_distillation": ("distill", "lagrangian", True),
    "eulerian_distillation": ("distill", "eulerian", True),
    "progressive_distillation": ("distill", "progressive", True),
    "flow_map_matching": ("distill", "flow_map_matching", False),
    "lagrangian_self_distillation": ("self", "lagrangian", False),
    "eulerian_self_distillation": ("self", "eulerian", False),
    "progressive_self_distillation": ("self", "progressive", False),
}

def needs_teacher(name: str) -> bool:
    """Whether objective `name` (a key of `OBJECTIVES`) distils a teacher velocity."""
    return _lookup(OBJECTIVES, name, "flow-map objective")[2]


def make_loss(name: str, flow_map: flow_map_lib.FlowMap, teacher_b=None, **kwargs):
    """Batch loss for a full objective name (a key of `OBJECTIVES`).

    kwargs go to `make_distill_loss` (teacher objectives and "flow_map_matching") or
    `make_self_distill_loss`; options the chosen factory does not take are an error.
    """
    kind, short, teacher = _lookup(OBJECTIVES, name, "flow-map objective")
    if kind == "distill":
        return make_distill_loss(short, flow_map, teacher_b if teacher else None, **kwargs)
    return make_self_distill_loss(short, flow_map, **kwargs)


# ---------------------------------------------------------------------------
# Training driver (thin wrapper over lfm_jax.train).
# ---------------------------------------------------------------------------

def sample_rows(key, data, batch_size: int):
    """The same batch_size random rows (with replacement) of every array in `data`
    (an array or a tuple of arrays with a common leading axis); `data.sample_batch`."""
    from lfm_jax import data as data_lib

    return data_lib.sample_batch(key, data, batch_size)


def train_flow_map(loss_fn: Callable, flow_map: flow_map_lib.FlowMap, data, *, key,
                   num_steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
                   schedule: str = "cosine", warmup_steps: int = 0, grad_clip: float = 1.0,
                   ema_decay: float = 0.999, steps_per_call: int = 100, mesh=None,
                   init_params=None):
    """Train a flow map with `lfm_jax.train` (jitted fused steps, on-device batches).

    data: x1 array (n, ...) or a pair (x0, x1). Returns (state, history); use
    state.ema_params (or state.params) for sampling.
    """
    from lfm_jax import distributed, train

    mesh = distributed.make_mesh() if mesh is None else mesh
    steps_per_call = max(1, min(int(steps_per_call), int(num_steps)))
    if num_steps % steps_per_call:
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of steps_per_call "
                         f"({steps_per_call})")
    opt = train.make_optimizer(lr=lr, schedule=schedule, warmup_steps=warmup_steps,
                               total_steps=num_steps, grad_clip=grad_clip)
    k_init, k_state = jax.random.split(key)
    params = flow_map.init(k_init) if init_params is None else init_params
    state = train.create_train_state(k_state, params, opt, mesh=mesh)
    step_fn = train.make_train_step(
        loss_fn, opt, loss_takes_step=True,
        sample_batch=functools.partial(sample_rows, batch_size=batch_size),
        steps_per_call=steps_per_call, ema_decay=ema_decay, mesh=mesh)
    data = distributed.replicate(jax.tree_util.tree_map(jnp.asarray, data), mesh)
    return train.fit(state, step_fn, data, num_steps, steps_per_call=steps_per_call)


# ---------------------------------------------------------------------------
# Local Flow Matching: distil every block's inverse, generate with N x K calls.
# ---------------------------------------------------------------------------

def distill_lfm_blocks(block_velocities: Sequence[Callable], block_pairs: Sequence,
                       make_flow_map: Callable, *, objective: str = "lagrangian",
                       key, interp=None, loss_kwargs=None, train_kwargs=None,
                       self_distill: bool = False):
    """Distil each LFM block's inverse map into a flow map.

    Block n was trained by flow matching between x0 = x_l (data side, t = 0) and
    x1 = x_r (noise side, t = 1), giving velocity b_n. Its inverse is the flow of the
    reversed field -b_n(1 - t, x) from x_r (t = 0) to x_l (t = 1). For linear and
    trig interpolants, I_s(x_r, x_l) = I_{1-s}(x_l, x_r), so the interpolant between the
    swapped pair (x0 = x_r, x1 = x_l) has exactly the reversed teacher's marginals and
    supplies the distillation points x = I_s.

    Args:
      block_velocities: [b_1, ..., b_N], closures b_n(t, x) (parameters bound).
      block_pairs: [(x_l, x_r), ...] arrays (m, ...) per block (the LFM training pairs).
      make_flow_map: () -> FlowMap (a fresh student per block).
      objective: a key of `DISTILL_OBJECTIVES`, or of `SELF_DISTILL_OBJECTIVES` with
        `self_distill=True` (then the teacher velocity is unused: the block's pairs
        are learned directly, a flow-map replacement of the block).
    Returns:
      [(flow_map_n, params_n (EMA)), ...] in block order n = 1..N.
    """
    if len(block_velocities) != len(block_pairs):
        raise ValueError(f"{len(block_velocities)} velocities but {len(block_pairs)} pairs")
    interp = interpolants_lib.trig() if interp is None else interp
    out = []
    for n, (b, (x_l, x_r)) in enumerate(zip(block_velocities, block_pairs)):
        fm = make_flow_map()
        if self_distill:
            loss_fn = make_self_distill_loss(objective, fm, interp=interp,
                                             **(loss_kwargs or {}))
        else:
            loss_fn = make_distill_loss(objective, fm, time_reversed(b), interp=interp,
                                        **(loss_kwargs or {}))
        state, _ = train_flow_map(loss_fn, fm, (x_r, x_l), key=jax.random.fold_in(key, n),
                                  **(train_kwargs or {}))
        out.append((fm, state.ema_params))
    return out


def generate_lfm(block_maps: Sequence, z, num_steps: int = 1):
    """x = F_1( ... F_N(z)) with F_n = K-step sampling of block n's distilled inverse.

    block_maps: [(flow_map_n, params_n)] in block order (as `distill_lfm_blocks`
    returns). z: (n, ...) noise. Cost N x K network calls per sample.
    """
    times = flow_map_lib.uniform_grid(num_steps)
    x = z
    for fm, params in reversed(list(block_maps)):
        x = flow_map_lib.sample(fm.bind(params), x, times)
    return x


def timed(fn: Callable, *args, repeats: int = 3):
    """(result, best wall seconds) of a jitted fn over `repeats` runs after one warm-up."""
    out = jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best
