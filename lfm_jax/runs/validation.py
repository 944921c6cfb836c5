"""Check every count, size, probability and tolerance of a run config before any work.

`validate_config(config)` applies two tables:

- `RULES`: (key path, check, requirement) for one value, e.g.
  ("lfm.steps_per_block", at_least(1)) gives
  "config.lfm.steps_per_block must be an integer >= 1, got 0".
- `CROSS_RULES`: (methods, key path, check(config), requirement) relating several
  keys (fused steps dividing the step counts), applied only when config.method is
  one of `methods`.

A rule whose key path does not exist in the config is skipped, so the same table
serves configs from before and after a key is added or moved (the ODE settings live
in config.eval.ode.* and config.lfm.push_ode.*: solver, rtol, atol, num_steps,
max_steps). Names (solver, interpolant, objective ...) are checked by the registries
that use them; this module checks numbers, the model settings the network would
ignore (`check_model_settings`), and two paths: config.eval.classifier_workdir
(`check_classifier_workdir`: a trained classifier of the same data split) and
config.eval.inception_weights (`check_inception_weights`: the local Inception weights
file, and pytorch-fid installed).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple


class InvalidConfigError(ValueError):
    """A config value breaks a rule; the message names the key."""


class Rule(NamedTuple):
    path: str                       # dotted key path below `config`
    check: Callable[[Any], bool]    # value -> ok
    requirement: str                # "an integer >= 1", "in [0, 1]", ...


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def at_least(n: int) -> tuple:
    """Integer >= n."""
    return (lambda v: _is_int(v) and v >= n), f"an integer >= {n}"


def positive() -> tuple:
    """Finite real > 0."""
    return (lambda v: _is_real(v) and 0 < v < float("inf")), "a finite number > 0"


def non_negative() -> tuple:
    """Finite real >= 0."""
    return (lambda v: _is_real(v) and 0 <= v < float("inf")), "a finite number >= 0"


def in_interval(lo: float, hi: float, *, hi_open: bool = False) -> tuple:
    """Real in [lo, hi] (or [lo, hi))."""
    if hi_open:
        return (lambda v: _is_real(v) and lo <= v < hi), f"in [{lo}, {hi})"
    return (lambda v: _is_real(v) and lo <= v <= hi), f"in [{lo}, {hi}]"


def one_of(*names) -> tuple:
    return (lambda v: v in names), f"one of {list(names)}"


def each(check: tuple, *, non_empty: bool = False) -> tuple:
    """A tuple / list whose every entry passes `check`."""
    fn, req = check

    def ok(v):
        return (isinstance(v, (tuple, list)) and (len(v) > 0 or not non_empty)
                and all(fn(x) for x in v))

    return ok, ("a non-empty " if non_empty else "a ") + f"sequence of entries {req}"


def _rules(*specs) -> tuple:
    return tuple(Rule(path, *check) for path, check in specs)


def _ode_rules(prefix: str) -> list:
    return [(f"{prefix}.rtol", positive()), (f"{prefix}.atol", positive()),
            (f"{prefix}.num_steps", at_least(0)), (f"{prefix}.max_steps", at_least(1))]


RULES = _rules(
    ("seed", at_least(0)),
    ("data.n_train", at_least(1)), ("data.n_val", at_least(1)),
    ("data.n_test", at_least(1)), ("data.dim", at_least(1)),
    ("data.n_components", at_least(1)),
    ("model.hidden", each(at_least(1))),
    ("model.num_frequencies", at_least(0)), ("model.max_frequency", positive()),
    ("fm.beta_a", positive()), ("fm.beta_b", positive()),
    ("train.steps", at_least(1)), ("train.batch_size", at_least(1)),
    ("train.steps_per_call", at_least(1)), ("train.lr", positive()),
    ("train.warmup_steps", at_least(0)), ("train.grad_clip", non_negative()),
    ("train.weight_decay", non_negative()),
    ("train.ema_decay", in_interval(0.0, 1.0, hi_open=True)),
    ("train.end_lr_factor", in_interval(0.0, 1.0)),
    ("train.checkpoint_every", at_least(1)), ("train.keep_checkpoints", at_least(1)),
    ("train.num_devices", at_least(0)),
    ("eval.n_samples", at_least(1)), ("eval.nll_examples", at_least(1)),
    ("eval.chunk_size", at_least(1)), ("eval.divergence", one_of("exact", "hutchinson")),
    *_ode_rules("eval.ode"),
    ("lfm.num_blocks", at_least(0)), ("lfm.step_c", positive()),
    ("lfm.step_rho", positive()), ("lfm.step_sizes", each(positive())),
    ("lfm.beta_a", positive()), ("lfm.beta_b", positive()),
    ("lfm.steps_per_block", at_least(1)), ("lfm.chunk_size", at_least(1)),
    ("lfm.n_val", at_least(1)), ("lfm.n_probes", at_least(1)),
    ("lfm.divergence", one_of("exact", "hutchinson")),
    *_ode_rules("lfm.push_ode"),
    ("flow_map.diagonal_fraction", in_interval(0.0, 1.0)),
    ("flow_map.initial_gap", in_interval(0.0, 1.0)),
    ("flow_map.anneal_steps", at_least(0)),
    ("flow_map.num_teacher_steps", at_least(1)),
    ("flow_map.teacher_substeps", at_least(1)),
    ("flow_map.teacher_steps", at_least(1)),
    ("flow_map.sample_steps", each(at_least(1), non_empty=True)),
    ("model.softplus_beta", positive()),
    ("train.decay_rate", ((lambda v: _is_real(v) and 0 < v <= 1), "in (0, 1]")),
    ("train.decay_every", at_least(1)),
    ("eval.split", one_of("test", "val")),
    ("model.kind", one_of("mlp", "unet")), ("model.num_classes", at_least(0)),
    ("model.unet_channels", at_least(0)), ("model.unet_time_scale", positive()),
    ("model.unet_dropout", ((lambda v: _is_real(v) and (v == -1 or 0 <= v < 1)),
                            "-1 (the preset's rate) or in [0, 1)")),
    ("model.compute_dtype", one_of("float32", "bfloat16")),
    ("fm.p_uncond", in_interval(0.0, 1.0)), ("eval.guidance_w", non_negative()),
    ("eval.grid_per_class", at_least(1)),
    ("data.source_split", one_of("train", "test")),
    ("data.placement", one_of("device", "host")),
    ("eval.fd_samples", at_least(2)),
    ("eval.guidance_ws", each(non_negative(), non_empty=True)),
    ("classifier.channels", each(at_least(1), non_empty=True)),
    ("classifier.features", at_least(1)),
)


class CrossRule(NamedTuple):
    methods: tuple                       # config.method values it applies to
    path: str                            # the key named in the message
    needs: tuple                         # every key path it reads (skipped if one is missing)
    check: Callable[[Any], bool]         # config -> ok
    requirement: str


CROSS_RULES = (
    CrossRule(("fm", "flow_map", "classifier"), "train.steps", ("train.steps", "train.steps_per_call"),
              lambda c: c.train.steps % c.train.steps_per_call == 0,
              "a multiple of config.train.steps_per_call"),
    CrossRule(("lfm",), "lfm.steps_per_block", ("lfm.steps_per_block", "train.steps_per_call"),
              lambda c: c.lfm.steps_per_block % c.train.steps_per_call == 0,
              "a multiple of config.train.steps_per_call"),
    CrossRule(("flow_map",), "flow_map.teacher_steps",
              ("flow_map.teacher_steps", "train.steps_per_call"),
              lambda c: c.flow_map.teacher_steps % c.train.steps_per_call == 0,
              "a multiple of config.train.steps_per_call"),
    CrossRule(("fm", "lfm", "flow_map", "classifier"), "train.batch_size",
              ("train.batch_size", "train.num_devices"),
              lambda c: c.train.num_devices == 0 or c.train.batch_size % c.train.num_devices == 0,
              "a multiple of config.train.num_devices"),
    CrossRule(("flow_map",), "data.placement", ("data.placement",),
              lambda c: c.data.placement == "device",
              '"device" for this method (host-fed batches: the fm and lfm jobs)'),
    CrossRule(("fm", "lfm"), "data.placement", ("data.placement", "data.fresh_samples"),
              lambda c: c.data.placement == "device" or not c.data.fresh_samples,
              '"device" with config.data.fresh_samples (fresh draws need no data set)'),
    CrossRule(("lfm",), "lfm.num_blocks",
              ("lfm.num_blocks", "lfm.step_sizes", "lfm.free_last_block"),
              lambda c: c.lfm.num_blocks > 0 or len(c.lfm.step_sizes) + c.lfm.free_last_block > 0,
              ">= 1, or 0 with a non-empty config.lfm.step_sizes or free_last_block"),
)

_RAISE = object()
_MISSING = object()


def get_path(config, path: str, default=_RAISE):
    """config.a.b.c for path "a.b.c"; `default` (or KeyError) when a key is missing."""
    node = config
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            if default is _RAISE:
                raise KeyError(f"config.{path}") from None
            return default
    return node


def validate_config(config) -> None:
    """Raise ValueError naming the first key whose value breaks a rule.

    Checks every rule of `RULES` and `CROSS_RULES` (see the module docstring) whose
    keys exist in `config` (an ml_collections.ConfigDict or nested dicts); a missing
    key is skipped. Costs microseconds: call it before any data is loaded.

    Raises:
      InvalidConfigError (a ValueError): "config.<key> must be <requirement>, got <value>" (cross rules
        also give the other values involved).
    """
    for rule in RULES:
        value = get_path(config, rule.path, _MISSING)
        if value is _MISSING:
            continue
        if not rule.check(value):
            raise InvalidConfigError(
                f"config.{rule.path} must be {rule.requirement}, got {value!r}")
    method = get_path(config, "method", None)
    for rule in CROSS_RULES:
        if method not in rule.methods:
            continue
        values = {p: get_path(config, p, _MISSING) for p in rule.needs}
        if any(v is _MISSING for v in values.values()):
            continue
        if not rule.check(config):
            others = ", ".join(f"config.{p}={v!r}" for p, v in values.items() if p != rule.path)
            raise InvalidConfigError(f"config.{rule.path} must be {rule.requirement}, got "
                             f"{values[rule.path]!r} ({others})")
    check_model_settings(config)
    check_classifier_workdir(config)
    check_inception_weights(config)


def check_model_settings(config) -> None:
    """For the methods that build config.model's network (fm, lfm, flow_map): no
    setting that network would silently ignore (`models.check_supported`: e.g.
    compute_dtype="bfloat16" on a class-conditional MLP). Reads the config only."""
    if get_path(config, "method", None) not in ("fm", "lfm", "flow_map"):
        return
    if get_path(config, "model", None) is None:
        return
    from lfm_jax.runs import models

    try:
        models.check_supported(config)
    except ValueError as err:
        raise InvalidConfigError(str(err)) from None


def check_classifier_workdir(config) -> None:
    """With config.eval.classifier_workdir set (fm / lfm): the workdir must hold a
    trained classifier (`classifier_eval.missing`: the message names the missing file
    and the command that trains it) of the same data split (data.name, source_split,
    n_val, n_test and seed), so that the test images it scores against were never
    trained on. Reads one small JSON file."""
    path = get_path(config, "eval.classifier_workdir", "")
    if not path or get_path(config, "method", None) not in ("fm", "lfm"):
        return
    from lfm_jax.runs import classifier_eval

    message = classifier_eval.missing(path, get_path(config, "data.name", "digits"))
    if message:
        raise InvalidConfigError(f"config.eval.classifier_workdir: {message}")
    changed = classifier_eval.split_mismatch(classifier_eval.read_spec(path), config)
    if changed:
        lines = ", ".join(f"{k}: classifier {a!r}, this run {b!r}"
                          for k, (a, b) in changed.items())
        raise InvalidConfigError(
            f"config.eval.classifier_workdir: the classifier in {path} was trained on "
            f"another data split ({lines}); its training images may be this run's "
            f"held-out test images. Train one with this run's data settings and seed.")


def check_inception_weights(config) -> None:
    """With config.eval.inception_weights set: torch and pytorch-fid import and the
    weights file exists (`inception_fid.check_weights`), so a run stops before any
    training, not at its evaluation. Raises FileNotFoundError / ImportError, the
    message starting "config.eval.inception_weights: " and naming the path or the
    install command."""
    path = get_path(config, "eval.inception_weights", "")
    if not path:
        return
    from lfm_jax import inception_fid

    try:
        inception_fid.check_weights(path)
    except (FileNotFoundError, ImportError) as e:
        raise type(e)(f"config.eval.inception_weights: {e}") from e
