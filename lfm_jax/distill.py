"""Teachers, batch-level flow-map losses for the trainer, and LFM block distillation.

Teachers are velocity closures b(t, x) of ONE example:
- `velocity_teacher(network, params)`: a trained flow-matching velocity
  (`load_velocity_params` restores its params from an `lfm_jax.checkpoint` directory).
  It is a `Teacher`, b = apply(params, .) with the params kept apart, so that a
  compiled training step can take them as an argument (`make_loss`'s
  teacher_params, `BlockDistiller`: one compilation for the teachers of every LFM
  block) instead of baking them in as constants.
- `time_reversed(b)`: t -> -b(1 - t, x). Its flow map from 0 to 1 is the INVERSE of
  b's; an LFM block b_n (data side at t = 0, noise side at t = 1) is distilled through
  its reversed field, so the student carries noise to data, as generation needs.
- `ode_flow_map(b, num_steps)`: the teacher's flow map by fixed-step RK4, used as the
  frozen map of progressive distillation when only a velocity is given.

Batch losses `loss_fn(params, key, batch, step=0) -> (loss, aux)` for
`lfm_jax.train.make_train_step`: `make_loss(name, flow_map, teacher=None, ...)`, name a
key of `losses.OBJECTIVES` (the per-example loss, default (s, t) sampler and whether a
teacher is needed come from its record). A batch is either x1 (n, ...) (data; x0 ~ N(0, I) is drawn inside) or a pair
(x0, x1) of arrays (n, ...), e.g. (x_r, x_l) for an LFM block's inverse; with class
labels y (n,) it is (x0, x1, y) or {"x": x1, "y": y}, training a class-conditional
student whose per-example closures are bound to the example's label. Distillation
points are x = I_s (the interpolant at the map's start time), which has the teacher's
marginal rho_s when the teacher was trained by flow matching on the same interpolant
and pairs.

Objectives and samplers are chosen by name here, in Python, before jit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lfm_jax import flow_map as flow_map_lib
from lfm_jax import guidance
from lfm_jax import interpolants as interpolants_lib
from lfm_jax import losses


# ---------------------------------------------------------------------------
# Teachers.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A frozen velocity b(t, x, *y) = apply(params, t, x, *y) (stop-gradient params),
    with apply and params kept apart: teachers of one `apply` (e.g. the blocks of one
    LFM network, `velocity_teacher`) differ only in params, which a compiled loss can
    then take as an argument (`make_loss`'s loss_fn(..., teacher_params)).

    apply: (params, t, x, *y) -> velocity of ONE example; compared with == to decide
    whether two teachers share a compiled step, so it should be a stable function
    (network.apply) or an equality-comparing wrapper (`_Reversed`, `_Guided`).
    """

    apply: Callable
    params: Any

    def __call__(self, t, x, *y):
        return self.apply(jax.lax.stop_gradient(self.params), t, x, *y)

    def with_params(self, params) -> "Teacher":
        """The same teacher with other params (e.g. traced arguments of a step)."""
        return Teacher(self.apply, params)


@dataclasses.dataclass(frozen=True)
class _Guided:
    """apply(params, t, x, y) = v(t, x, null) + w (v(t, x, y) - v(t, x, null))."""

    network: Any
    w: float

    def __call__(self, params, t, x, y):
        return guidance.guided_apply(self.network, y, self.w)(params, t, x)


@dataclasses.dataclass(frozen=True)
class _Reversed:
    """apply(params, t, x, *y) = -inner(params, 1 - t, x, *y) (`time_reversed`)."""

    inner: Callable

    def __call__(self, params, t, x, *y):
        return -self.inner(params, 1.0 - t, x, *y)


def velocity_teacher(network, params) -> Teacher:
    """b(t, x) = network.apply(params, t, x) with parameters frozen (stop-gradient).

    A class-conditional network's teacher also takes a label, b(t, x, y) =
    network.apply(params, t, x, y) (y: one example's int label), the form labelled
    batches of `make_loss` call. A `Teacher` (apply = network.apply)."""
    return Teacher(network.apply, jax.lax.stop_gradient(params))


def guided_teacher(network, params, w) -> Teacher:
    """b(t, x, y) = v(t, x, null) + w (v(t, x, y) - v(t, x, null)), the classifier-free
    guided field of a class-conditional velocity network (`guidance.guided_apply`, both
    branches in one call) with parameters frozen, for labelled batches of `make_loss`.
    At the null label it is the null field for every w. A `Teacher` (w is part of
    its apply, params are apart)."""
    if getattr(network, "null_label", None) is None:
        raise ValueError("a guided teacher needs a class-conditional velocity network "
                         "with a null label (num_classes set); this network has none")
    return Teacher(_Guided(network, w), jax.lax.stop_gradient(params))


def load_velocity_params(directory: str, template_state, use_ema: bool = True):
    """Restore a trained velocity's params from a `Checkpointer` directory.

    template_state: a `train.TrainState` of the same structure (e.g. a fresh
    `create_train_state(...)` of the same network and optimiser). Returns the EMA
    params (or raw params) of the latest checkpoint; raises if there is none.
    """
    from lfm_jax import checkpoint

    with checkpoint.Checkpointer(directory, async_save=False) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        state = ckpt.restore(template_state)
    return state.ema_params if use_ema else state.params


def time_reversed(b: Callable) -> Callable:
    """The reversed field t -> -b(1 - t, x): its time-0 -> 1 flow inverts b's (a
    labelled teacher b(t, x, y) gives -b(1 - t, x, y)). A `Teacher` gives a `Teacher`
    of the same params."""
    if isinstance(b, Teacher):
        return Teacher(_Reversed(b.apply), b.params)
    return lambda t, x, *y: -b(1.0 - t, x, *y)


def _rk4_step(b, s, t, x):
    """One RK4 step of dx/dt = b(t, x) from time s to time t."""
    h = t - s
    k1 = b(s, x)
    k2 = b(s + h / 2, x + (h / 2) * k1)
    k3 = b(s + h / 2, x + (h / 2) * k2)
    k4 = b(t, x + h * k3)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def ode_flow_map(b: Callable, num_steps: int = 8) -> Callable:
    """X(s, t, x): num_steps fixed RK4 steps of dx/dt = b(t, x) from s to t (one example).

    4 num_steps velocity calls; X(s, s, x) = x exactly; backward when t < s.
    """
    num_steps = int(num_steps)
    step = functools.partial(_rk4_step, b)

    def X(s, t, x):
        return flow_map_lib.sample(step, x, flow_map_lib.uniform_grid(num_steps, s, t),
                                   batched=False)

    return X


# ---------------------------------------------------------------------------
# Batch losses.
# ---------------------------------------------------------------------------

def _pairs(key, batch):
    """(x0, x1, y) from a batch: x1 alone or {"x": x1(, "y": y)} (x0 ~ N(0, I) drawn
    here), a pair (x0, x1) or a labelled triple (x0, x1, y); y None when unlabelled."""
    if isinstance(batch, dict):
        x1, y = batch["x"], batch.get("y")
        return jax.random.normal(key, x1.shape, x1.dtype), x1, y
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            x0, x1 = batch
            return x0, x1, None
        if len(batch) == 3:
            return tuple(batch)
        raise ValueError(f"a tuple batch is (x0, x1) or (x0, x1, y), got {len(batch)} "
                         f"arrays")
    return jax.random.normal(key, batch.shape, batch.dtype), batch, None


def _intermediate_midpoint(key, s, t):
    return s + 0.5 * (t - s)


def _intermediate_uniform(key, s, t):
    return s + jax.random.uniform(key, s.shape, s.dtype) * (t - s)


# PSD intermediate time u in [s, t]: "midpoint" (u = (s + t) / 2) or "uniform".
INTERMEDIATE_TIMES = {"midpoint": _intermediate_midpoint, "uniform": _intermediate_uniform}


def make_loss(name: str, flow_map: flow_map_lib.FlowMap, teacher: Optional[Callable] = None,
              *, interp=None, time_sampler: Optional[str] = None, sampler_kwargs=None,
              intermediate: str = "uniform", teacher_map: Optional[Callable] = None,
              teacher_substeps: int = 4, label_dropout: float = 0.0,
              **options) -> Callable:
    """Batch loss (params, key, batch, step=0, teacher_params=None) -> (mean loss, aux)
    of objective `name`.

    Per example: `losses.OBJECTIVES[name].loss(c, interp, s, u, t, x0, x1, **options)`
    with c = `flow_map.closures(params, teacher, teacher_map)` (the student's X, its own
    velocity v_{t,t} by one network call, its learned lv(s, t) if attached).

    Labelled batches ((x0, x1, y) or {"x": x1, "y": y}; y (n,) int labels) train a
    class-conditional student (`FlowMap` of a network with num_classes): example i's
    closures are bound to its label y_i, replaced by the network's null label with
    probability `label_dropout` (`guidance.drop_labels`, key fold_in(key, 3)), so one
    network learns the conditional maps X(s, t, x, y) and the null map X(s, t, x, null)
    (classifier-free guidance, `guidance.guided_flow_map`). The teacher is then
    b(t, x, y) and is bound to the same (possibly dropped) label, so the null map learns
    the teacher's null field; a `teacher_map` is likewise X(s, t, x, y). Unlabelled
    batches go exactly as before (no label: the null class of a class-conditional
    network).

    Args:
      name: a key of `losses.OBJECTIVES`.
      flow_map: the student `FlowMap`.
      teacher: teacher velocity b(t, x), required by the objectives with
        `needs_teacher` (ignored by the others).
      interp: interpolant giving I_s, I_t (default linear).
      time_sampler: a key of `flow_map.TIME_PAIR_SAMPLERS` (default: the objective's),
        with keyword options `sampler_kwargs`.
      intermediate: how u in [s, t] is drawn, a key of `INTERMEDIATE_TIMES` (read by
        the progressive self-distillation only).
      teacher_map: frozen teacher map for progressive distillation (default:
        `ode_flow_map(teacher, teacher_substeps)`, teacher_substeps RK4 steps per jump).
      label_dropout: probability in [0, 1] of the null label in labelled batches.
      options: the objective's keyword options (`Objective.options`), overriding its
        defaults; any other name is an error.
    aux: fraction of the batch off the diagonal s = t.
    Note: `step` (for the annealed sampler) defaults to 0; `make_train_step(...,
      loss_takes_step=True)` passes the training step. `teacher_params` (a `Teacher`
      only; None: its own params) replaces the teacher's params, e.g. by an argument
      of a compiled step (`make_train_step(..., loss_takes_context=True)`), so that
      one compilation serves every teacher of the same apply (`BlockDistiller`).
    """
    objective = losses.get_objective(name)
    unknown = set(options) - set(objective.options)
    if unknown:
        raise ValueError(f"objective {name!r} takes options {sorted(objective.options)}, "
                         f"not {sorted(unknown)}")
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"objective {name!r} needs a teacher velocity")
    if not 0.0 <= float(label_dropout) <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
    if not objective.needs_teacher:
        teacher = teacher_map = None
    own_teacher_map = objective.needs_teacher and teacher_map is None
    options = {**objective.options, **options}
    interp = interpolants_lib.linear() if interp is None else interp
    sample_st = flow_map_lib.get_time_pair_sampler(time_sampler or objective.time_sampler,
                                                   **(sampler_kwargs or {}))
    if intermediate not in INTERMEDIATE_TIMES:
        raise ValueError(f"unknown intermediate time {intermediate!r}; known: "
                         f"{sorted(INTERMEDIATE_TIMES)}")
    sample_u = INTERMEDIATE_TIMES[intermediate]

    def teachers(teacher_params):
        """(teacher, teacher_map): the teacher with teacher_params if given."""
        b = teacher
        if teacher_params is not None and teacher is not None:
            if not isinstance(teacher, Teacher):
                raise TypeError("teacher_params replaces the params of a `Teacher` "
                                "(velocity_teacher, guided_teacher); this teacher is a "
                                "plain function")
            b = teacher.with_params(teacher_params)
        b_map = ode_flow_map(b, teacher_substeps) if own_teacher_map else teacher_map
        return b, b_map

    def labelled_closures(params, y, b_full):
        """Closures of ONE example bound to its label y (student and teacher)."""
        if b_full is None:
            b = b_map = None
        else:
            b = lambda t_, x_: b_full(t_, x_, y)  # noqa: E731
            b_map = (ode_flow_map(b, teacher_substeps) if own_teacher_map else
                     (lambda s_, t_, x_: teacher_map(s_, t_, x_, y)))
        return flow_map.closures(params, b, b_map, label=y)

    def loss_fn(params, key, batch, step=0, teacher_params=None):
        k_pair, k_time, k_u = jax.random.split(key, 3)
        x0, x1, y = _pairs(k_pair, batch)
        s, t = sample_st(k_time, x1.shape[0], step)
        s, t = s.astype(x1.dtype), t.astype(x1.dtype)
        u = sample_u(k_u, s, t)
        b_full, b_map_full = teachers(teacher_params)
        if y is None:
            c = flow_map.closures(params, b_full, b_map_full)

            def one(*args):
                return objective.loss(c, interp, *args, **options)

            total = jax.vmap(one)(s, u, t, x0, x1)
        else:
            y = _labels_for(flow_map, jax.random.fold_in(key, 3), y, label_dropout)

            def one_labelled(s_, u_, t_, a, b, y_):
                return objective.loss(labelled_closures(params, y_, b_full), interp, s_,
                                      u_, t_, a, b, **options)

            total = jax.vmap(one_labelled)(s, u, t, x0, x1, y)
        return jnp.mean(total), {"off_diagonal": jnp.mean((s != t).astype(total.dtype))}

    return loss_fn


def _labels_for(flow_map, key, y, label_dropout):
    """The labels a labelled batch trains with: y (int32), each replaced by the
    student's null label with probability label_dropout; a clear error for a student
    that is not class-conditional."""
    null = flow_map.null_label
    if null is None:
        raise ValueError("a labelled batch needs a class-conditional student flow map "
                         "(a network with num_classes set); this one has no labels")
    if isinstance(label_dropout, (int, float)) and float(label_dropout) == 0.0:
        return jnp.asarray(y, jnp.int32)
    return guidance.drop_labels(key, y, float(label_dropout), null)


# ---------------------------------------------------------------------------
# Training driver (thin wrapper over lfm_jax.train).
# ---------------------------------------------------------------------------

def train_flow_map(loss_fn: Callable, flow_map: flow_map_lib.FlowMap, data, *, key,
                   num_steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
                   schedule: str = "cosine", warmup_steps: int = 0, grad_clip: float = 1.0,
                   ema_decay: float = 0.999, steps_per_call: int = 100, mesh=None,
                   init_params=None):
    """Train a flow map with `lfm_jax.train` (jitted fused steps, on-device batches).

    data: x1 array (n, ...), a pair (x0, x1), or labelled: (x0, x1, y) or
    {"x": x1, "y": y} with y (n,) int labels (a class-conditional flow map; see
    `make_loss`). Batches draw the same rows of every array (`data.sample_batch`).
    Returns (state, history); use state.ema_params (or state.params) for sampling.
    """
    fit = _flow_map_fitter(loss_fn, flow_map, num_steps=num_steps, batch_size=batch_size,
                           lr=lr, schedule=schedule, warmup_steps=warmup_steps,
                           grad_clip=grad_clip, ema_decay=ema_decay,
                           steps_per_call=steps_per_call, mesh=mesh)
    return fit(data, key=key, init_params=init_params)


def _flow_map_fitter(loss_fn: Callable, flow_map: flow_map_lib.FlowMap, *,
                     num_steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
                     schedule: str = "cosine", warmup_steps: int = 0,
                     grad_clip: float = 1.0, ema_decay: float = 0.999,
                     steps_per_call: int = 100, mesh=None, takes_teacher: bool = False):
    """`train_flow_map`'s optimiser and ONE jitted fused step, as
    fit(data, *, key, init_params=None, teacher_params=None) -> (state, history):
    every fit of the same data shapes reuses the compiled step. takes_teacher: the
    step takes the teacher's params as an argument (`train.make_train_step`'s
    loss_takes_context; loss_fn(params, key, batch, step, teacher_params) as
    `make_loss` builds it), each fit passing its own teacher_params."""
    from lfm_jax import data as data_lib
    from lfm_jax import distributed, train

    mesh = distributed.make_mesh() if mesh is None else mesh
    steps_per_call = max(1, min(int(steps_per_call), int(num_steps)))
    if num_steps % steps_per_call:
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of steps_per_call "
                         f"({steps_per_call})")
    opt = train.make_optimizer(lr=lr, schedule=schedule, warmup_steps=warmup_steps,
                               total_steps=num_steps, grad_clip=grad_clip)
    step_fn = train.make_train_step(
        loss_fn, opt, loss_takes_step=True,
        sample_batch=functools.partial(data_lib.sample_batch, batch_size=batch_size),
        steps_per_call=steps_per_call, ema_decay=ema_decay, mesh=mesh,
        loss_takes_context=takes_teacher)

    def fit(data, *, key, init_params=None, teacher_params=None):
        k_init, k_state = jax.random.split(key)
        params = flow_map.init(k_init) if init_params is None else init_params
        state = train.create_train_state(k_state, params, opt, mesh=mesh)
        data = distributed.replicate(jax.tree_util.tree_map(jnp.asarray, data), mesh)
        step = step_fn
        if takes_teacher:
            context = distributed.replicate(teacher_params, mesh)
            step = lambda st, d: step_fn(st, d, context)  # noqa: E731
        return train.fit(state, step, data, num_steps, steps_per_call=steps_per_call)

    return fit


# ---------------------------------------------------------------------------
# Local Flow Matching: distil every block's inverse, generate with N x K calls.
# ---------------------------------------------------------------------------

def distill_lfm_blocks(block_velocities: Sequence[Callable], block_pairs: Sequence,
                       make_flow_map: Callable, *, objective: str = "lmd", key,
                       interp=None, loss_kwargs=None, train_kwargs=None):
    """Distil each LFM block's inverse map into a flow map.

    Block n was trained by flow matching between x0 = x_l (data side, t = 0) and
    x1 = x_r (noise side, t = 1), giving velocity b_n. Its inverse is the flow of the
    reversed field -b_n(1 - t, x) from x_r (t = 0) to x_l (t = 1). For linear and
    trig interpolants, I_s(x_r, x_l) = I_{1-s}(x_l, x_r), so the interpolant between the
    swapped pair (x0 = x_r, x1 = x_l) has exactly the reversed teacher's marginals and
    supplies the distillation points x = I_s.

    Args:
      block_velocities: [b_1, ..., b_N], closures b_n(t, x) (parameters bound), or
        b_n(t, x, y) for labelled pairs (e.g. `guided_teacher`).
      block_pairs: [(x_l, x_r), ...] arrays (m, ...) per block (the LFM training pairs),
        or labelled triples (x_l, x_r, y), y (m,) int labels: the student (then
        class-conditional) is trained on (x_r, x_l, y) with the teacher bound to each
        pair's label (`make_loss`), learning X(s, t, x, y).
      make_flow_map: () -> FlowMap (a fresh student per block).
      objective: a key of `losses.OBJECTIVES`; an objective without a teacher ignores
        the block velocity and learns the block's pairs directly (a flow-map
        replacement of the block).
      loss_kwargs, train_kwargs: keyword arguments of `make_loss`, `train_flow_map`.
    Blocks are trained by one `BlockDistiller`: when make_flow_map returns one object
    and the velocities are `Teacher`s of one apply (`velocity_teacher` /
    `guided_teacher` of one network), every block runs the same compiled step.
    Returns:
      [(flow_map_n, params_n (EMA)), ...] in block order n = 1..N; each map carries
      noise-side points (t = 0) to data-side points (t = 1) of its block.
    """
    if len(block_velocities) != len(block_pairs):
        raise ValueError(f"{len(block_velocities)} velocities but {len(block_pairs)} pairs")
    distiller = BlockDistiller(objective=objective, interp=interp,
                               loss_kwargs=loss_kwargs, train_kwargs=train_kwargs)
    out = []
    for n, (b, pair) in enumerate(zip(block_velocities, block_pairs)):
        if len(pair) not in (2, 3):
            raise ValueError(f"block {n + 1}: pairs are (x_l, x_r) or (x_l, x_r, y), got "
                             f"{len(pair)} arrays")
        fmap = make_flow_map()
        out.append((fmap, distiller.distill(fmap, b, pair,
                                            key=jax.random.fold_in(key, n))))
    return out


class BlockDistiller:
    """Distils LFM blocks one at a time (`distill_lfm_blocks`, `runs.lfm_distill`)
    with one compiled training step for all of them where possible.

    `distill(fmap, b, pair, key)` trains the student fmap (fresh params from key) on
    the block's inverse: pairs (x_l, x_r[, y]) trained as (x_r, x_l[, y]) with teacher
    `time_reversed(b)` (`make_loss`, `train_flow_map` settings train_kwargs) and
    returns the EMA params. When b is a `Teacher` the step takes the teacher's params
    as an argument, and the loss and jitted step of the previous block are reused
    while the student is the same object and the teacher's apply is equal (the
    blocks of one LFM network: one compilation instead of one per block). The
    arithmetic is the same as with the params baked in; only XLA can no longer
    rewrite the teacher around constant params (e.g. split the first layer's product
    over its concatenated input when the class-conditional MLP's null-label embedding
    is a constant), so results can differ from a per-block step in the last bits
    (and then equal the teacher evaluated with its params as an argument, as the LFM
    itself runs it). A plain-function teacher is baked into a new step per block.
    """

    def __init__(self, *, objective: str = "lmd", interp=None, loss_kwargs=None,
                 train_kwargs=None):
        losses.get_objective(objective)  # unknown names fail before any training
        self.objective = objective
        self.interp = interpolants_lib.trig() if interp is None else interp
        self.loss_kwargs = dict(loss_kwargs or {})
        self.train_kwargs = dict(train_kwargs or {})
        self._shared = None  # (student, teacher apply, fit) of the last Teacher block

    def _fitter(self, fmap, teacher, takes_teacher: bool):
        loss_fn = make_loss(self.objective, fmap, teacher, interp=self.interp,
                            **self.loss_kwargs)
        return _flow_map_fitter(loss_fn, fmap, takes_teacher=takes_teacher,
                                **self.train_kwargs)

    def distill(self, fmap: flow_map_lib.FlowMap, b: Callable, pair, *, key,
                init_params=None):
        """EMA params of fmap trained on the inverse of block (b, pair); see the class.
        init_params: the student's starting params (None: fmap.init of the key), e.g.
        a warm start from the teacher (`unet.two_time_params_from_velocity`)."""
        if len(pair) not in (2, 3):
            raise ValueError(f"pairs are (x_l, x_r) or (x_l, x_r, y), got {len(pair)} "
                             f"arrays")
        x_l, x_r, *y = pair
        data = (x_r, x_l, *y)
        teacher = time_reversed(b)
        if not isinstance(teacher, Teacher):
            state, _ = self._fitter(fmap, teacher, False)(data, key=key,
                                                         init_params=init_params)
            return state.ema_params
        shared = self._shared
        if shared is None or shared[0] is not fmap or shared[1] != teacher.apply:
            # (the loss holds this teacher only for its apply: every fit passes params)
            shared = self._shared = (fmap, teacher.apply,
                                     self._fitter(fmap, teacher, True))
        state, _ = shared[2](data, key=key, teacher_params=teacher.params,
                             init_params=init_params)
        return state.ema_params



def _block_map(fmap, params, label=None, guidance_w=None) -> Callable:
    """One block's X(s, t, x): unlabelled, conditional on label, or guided at w."""
    if label is None:
        return fmap.bind(params)
    if guidance_w is None:
        return fmap.bind(params, label)
    return guidance.guided_flow_map(fmap, params, label, guidance_w)


def generate_lfm(block_maps: Sequence, z, num_steps: int = 1, labels=None,
                 guidance_w=None):
    """x = F_1( ... F_N(z)) with F_n = K-step sampling of block n's distilled inverse.

    block_maps: [(flow_map_n, params_n)] in block order (as `distill_lfm_blocks`
    returns). z: (n, ...) NOISE (the LFM's end at t = 1 of block N); the result is
    data-side samples (t = 0 of block 1), generation running the blocks backward,
    N to 1, each map from its noise side (its t = 0) to its data side (its t = 1).
    Cost N x K network calls per sample.

    labels: optional (n,) int labels of class-conditional maps: row i goes through
    X(s, t, x, labels[i]) (one network call a step), or, with guidance_w = w, through
    the guided map X_null + w (X_y - X_null) (`guidance.guided_flow_map`, both
    branches in one call). guidance_w without labels is an error.
    """
    if labels is None and guidance_w is not None:
        raise ValueError("guidance_w needs labels (one class label per row of z)")
    times = flow_map_lib.uniform_grid(num_steps)
    x = z
    for fmap, params in reversed(list(block_maps)):
        if labels is None:
            x = flow_map_lib.sample(fmap.bind(params), x, times)
        else:
            def one(xi, yi, fmap=fmap, params=params):
                return flow_map_lib.sample(_block_map(fmap, params, yi, guidance_w), xi,
                                           times, batched=False)

            x = jax.vmap(one)(x, jnp.asarray(labels, jnp.int32))
    return x


@functools.lru_cache(maxsize=32)
def _generate_rows(flow_maps: tuple, num_steps: int, labelled: bool = False,
                   guided: bool = False) -> Callable:
    """`distributed.sharded_map` fn: (params, key, z (c, ...), idx) -> generate_lfm;
    params the list of block params, or {"maps", "labels"(, "w")} when labelled (row
    idx's label params["labels"][idx])."""

    def fn(params, key, z, idx):
        if not labelled:
            return generate_lfm(list(zip(flow_maps, params)), z, num_steps)
        return generate_lfm(list(zip(flow_maps, params["maps"])), z, num_steps,
                            labels=params["labels"][idx],
                            guidance_w=params["w"] if guided else None)

    return fn


def generate_lfm_sharded(block_maps: Sequence, z, num_steps: int = 1, *, mesh=None,
                         chunk_size=None, labels=None, guidance_w=None):
    """`generate_lfm` over the rows of the host array z (n, ...), split over the mesh's
    devices in calls of chunk_size rows per device (`distributed.sharded_map`; memory
    bounded by one call, compiled once per (maps, K, chunk shape)). A single
    [(flow_map, params)] is plain K-step flow-map sampling from 0 to 1. labels (n,)
    and guidance_w as in `generate_lfm` (w is an argument of the compiled function:
    one compilation for every w). Returns numpy."""
    from lfm_jax import distributed

    if labels is None and guidance_w is not None:
        raise ValueError("guidance_w needs labels (one class label per row of z)")
    flow_maps = tuple(fmap for fmap, _ in block_maps)
    params = [p for _, p in block_maps]
    if labels is not None:
        labels = np.asarray(labels, np.int32)
        if labels.shape != (len(z),):
            raise ValueError(f"labels must have shape ({len(z)},) (one per row of z), got "
                             f"{labels.shape}")
        params = {"maps": params, "labels": labels}
        if guidance_w is not None:
            params["w"] = np.asarray(guidance_w, np.float32)
    fn = _generate_rows(flow_maps, int(num_steps), labels is not None,
                        guidance_w is not None)
    return distributed.sharded_map(fn, params, z, mesh=mesh, chunk_size=chunk_size)
