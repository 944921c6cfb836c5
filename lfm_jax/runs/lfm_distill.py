"""Local Flow Matching distillation: each trained block's map distilled into a flow map.

`load_trained_blocks` reads an LFM trained in a workdir (`lfm_blocks.train_blocks`),
`block_inputs` gives block n's input data x_l ~ q_{n-1} (read from the block artefacts,
`block_store`, or pushed again), and `distill_blocks` distils every block (one
`distill.BlockDistiller`, as `distill.distill_lfm_blocks`: one compiled training step
for all blocks), saving each distilled block so that a rerun resumes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import flax.serialization
import jax
import numpy as np

from lfm_jax import interpolants, lfm
from lfm_jax.runs import block_store, common, lfm_parts


def load_trained_blocks(config, workdir: str, example_shape):
    """(network, model, params_list) of an LFM trained in workdir (blocks/<n>/), not
    retrained. Raises FileNotFoundError naming the untrained block and the command
    that trains it, ValueError for params that are damaged or of another network.
    params: EMA if config.eval.use_ema (as `train_blocks` returns them)."""
    network = common.velocity_network(config, tuple(example_shape))
    model = lfm_parts.make_model(config, network, tuple(example_shape))
    template = jax.eval_shape(network.init, jax.random.PRNGKey(0))  # structure only
    params_list = []
    for n in range(1, model.num_blocks + 1):
        try:
            saved = block_store.load_params(workdir, n, template)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err}: block {n} of {model.num_blocks} is not trained in "
                f"{workdir}. Train the LFM first (same config and overrides), e.g. "
                f"`python -m experiments.train --config configs/lfm_checkerboard.py "
                f"--workdir {workdir}`") from err
        except Exception as err:  # damaged, or another architecture than this config's
            raise ValueError(f"cannot load block {n}'s params with this config's network "
                             f"(hidden={tuple(config.model.hidden)}): {err}. Rerunning the "
                             f"training command on {workdir} repairs damaged ones") from err
        params_list.append(saved["ema_params"] if config.eval.use_ema else saved["params"])
    return network, model, params_list


def block_inputs(workdir: str, model, params_list, x_train, n: int, *, mesh=None,
                 labels=None, network=None):
    """x_l ~ q_{n-1} for block n: the training set pushed through blocks 1..n-1, read
    from block n-1's artefacts (pushed again, and saved, if missing or damaged).

    The rows stay in x_train's order (every push maps row i to row i), so row i of
    block n's inputs has the training label labels[i]. A class-conditional LFM pushed
    its training data with each row's label (`lfm_blocks.train_blocks`); pass labels
    (n,) and its network to push again the same way (without them, the unlabelled
    push of an unconditional LFM)."""
    if n == 1:
        return np.asarray(x_train)
    with block_store.BlockArtefacts(workdir, n - 1) as store:
        x = store.train_pushed(recover=True)
        if x is None:
            x_prev = block_inputs(workdir, model, params_list, x_train, n - 1, mesh=mesh,
                                  labels=labels, network=network)
            x = lfm_parts.push_training_data(
                model, params_list[n - 2], x_prev, n - 1, mesh=mesh, network=network,
                labels=None if labels is None else np.asarray(labels)[: len(x_prev)])
            store.save(train_pushed=x)
    return x


def check_guidance(config, guidance_w, network=None) -> None:
    """ValueError unless guidance_w is None (null-class distillation) or a finite
    weight >= 0 for a class-conditional LFM (config.model.num_classes > 0, and the
    network, when given, class-conditional)."""
    if guidance_w is None:
        return
    w = float(guidance_w)
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"guidance_w must be a finite weight >= 0, got {guidance_w}")
    k = int(config.model.get("num_classes", 0))
    if k <= 0 or (network is not None and getattr(network, "num_classes", None) is None):
        raise ValueError(f"guidance_w={w:g} needs a class-conditional LFM "
                         f"(config.model.num_classes > 0, labelled image data); this "
                         f"LFM is unconditional (num_classes={k}). Leave guidance_w "
                         f"unset to distil its field")


def distill_blocks(config, workdir: str, network, model, params_list, x_train, *,
                   out_dir: str, objective: str = "lmd",
                   hidden=(256, 256, 256), steps: int = 2000, batch_size: int = 256,
                   lr: float = 1e-3, ema_decay: float = 0.995, steps_per_call: int = 100,
                   max_pairs: int = 0, unet_channels: int = 0,
                   unet_time_scale: float = 0.0, key=None, mesh=None,
                   verbose: bool = True, guidance_w=None, train_labels=None,
                   init_from_teacher: bool = False, learned_weighting: bool = False,
                   warmup_steps: int = 0, diagonal_fraction: float = 0.0):
    """Distil every block's inverse into a flow map (`distill.BlockDistiller`, as
    `distill.distill_lfm_blocks`; every block runs the same compiled step).

    Block n's pairs are its pushed data x_l (`block_inputs`) and the OU partner
    x_r = ou_step(x_l, h_n) (x_r ~ N(0, I) for a free block); the teacher is the block
    velocity v_n (`network.apply(params, t, x)`: for a class-conditional LFM the
    null-class, i.e. unguided marginal, field; see `student_flow_map`); objective a
    key of `losses.OBJECTIVES` (objectives without a teacher learn from the pairs
    alone). The student is `student_flow_map` (an MLP of width `hidden`, or a U-Net
    with model.kind "unet"). Each distilled block is saved to
    out_dir/block_<n>.msgpack with its settings in out_dir/settings.json; a rerun loads
    finished blocks instead of retraining them (a rerun with other settings in the same
    out_dir is an error).

    Guided distillation (guidance_w = w set; a class-conditional LFM only, else
    ValueError before any work): the student is class-conditional (the same family
    with the LFM's num_classes), the teacher of block n the guided field
    v_w(t, x, y) = v_n(t, x, null) + w (v_n(t, x, y) - v_n(t, x, null))
    (`distill.guided_teacher`) bound to each pair's label, and the pairs are
    (x_l, x_r, y) with y = train_labels (n,) (the labels of x_train: the pushed data
    keep x_train's row order, `block_inputs`). No label dropout: the student learns
    X(s, t, x, y), the flow map of the guided field of label y (at the null label the
    null field). guidance_w is recorded in settings.json (only when set).

    init_from_teacher (U-Net students of the blocks' width and time scale only, else
    ValueError before any work; recorded in settings.json when set): every student
    starts as one Euler step of its teacher's reversed field, X_{s,t}(x) = x +
    (t - s) (-v_n(1 - s, x)), its params made from the block's velocity params
    (`teacher_init`), instead of from a random init; the guided student starts from
    the conditional field (w = 1), the null-class student from the null field.

    learned_weighting: students with a learned loss weighting lv(s, t)
    (`student_flow_map`; recorded in settings.json when set).
    warmup_steps: linear lr warm-up before the cosine decay (recorded when > 0); a
    warm-started student's first Adam steps otherwise move every weight by about lr.
    diagonal_fraction: > 0: the fraction of every batch whose time pair the
    objective's sampler puts on the diagonal s = t (`flow_map.upper_triangle`; it
    replaces the self-distillation samplers' own 0.75; recorded when > 0); 0: the
    objective's default. On the diagonal a teacher objective's residual compares the
    student's velocity v_{s,s} with the teacher's, which keeps the short jumps
    accurate (BENCHMARKS.md section 7).

    Returns:
      ([(flow_map, params)] in block order, [per-block info dicts]).
    """
    from lfm_jax import distill, losses

    losses.get_objective(objective)  # an unknown name fails before any work
    check_guidance(config, guidance_w, network)
    check_warmup(steps, warmup_steps)
    check_diagonal_fraction(diagonal_fraction)
    if init_from_teacher:
        check_init_from_teacher(config, unet_channels, unet_time_scale)
    guided = guidance_w is not None
    if guided:
        if train_labels is None:
            raise ValueError("guidance_w needs train_labels, the class labels of x_train "
                             "(e.g. dataset.train_labels)")
        train_labels = np.asarray(train_labels, np.int32)
        if train_labels.shape != (len(x_train),):
            raise ValueError(f"train_labels must have shape ({len(x_train)},) (one per row "
                             f"of x_train), got {train_labels.shape}")
    conditional_lfm = getattr(network, "num_classes", None) is not None
    push_labels = train_labels if conditional_lfm and train_labels is not None else None
    mesh = common.make_mesh(config) if mesh is None else mesh
    os.makedirs(out_dir, exist_ok=True)
    settings = {"objective": objective, "hidden": list(hidden), "steps": int(steps),
                "batch_size": int(batch_size), "lr": float(lr), "ema_decay": float(ema_decay),
                "max_pairs": int(max_pairs), "interpolant": config.lfm.interpolant,
                "num_blocks": model.num_blocks}
    if guided:  # (settings of null-class distillation stay as before)
        settings["guidance_w"] = float(guidance_w)
    if config.model.get("kind", "mlp") == "unet":  # (MLP settings files stay as before)
        settings["student"] = student_description(config, unet_channels, unet_time_scale)
    # (options recorded only when set: older settings files stay valid)
    settings.update(_options_record(init_from_teacher, learned_weighting, warmup_steps,
                                    diagonal_fraction))
    settings_path = os.path.join(out_dir, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            old = json.load(f)
        if old != settings:
            raise ValueError(f"{out_dir} holds blocks distilled with other settings "
                             f"{old}; use another output directory or delete it")
    else:
        common.save_json(settings_path, settings)
    key = jax.random.PRNGKey(config.seed + 1) if key is None else key
    fmap = student_flow_map(config, model.example_shape, hidden, unet_channels,
                            unet_time_scale, conditional=guided,
                            learned_weighting=learned_weighting)
    interp = interpolants.get(config.lfm.interpolant)
    spc = max(1, min(int(steps_per_call), int(steps)))
    train_kwargs = dict(num_steps=int(steps) // spc * spc, batch_size=int(batch_size),
                        lr=float(lr), ema_decay=float(ema_decay), steps_per_call=spc,
                        mesh=mesh, warmup_steps=int(warmup_steps))
    template = jax.eval_shape(fmap.init, jax.random.PRNGKey(0))  # structure only
    # one distiller for every block: the student and the teachers' apply are shared,
    # so the blocks run one compiled step (the teachers' params are its argument)
    loss_kwargs = ({"sampler_kwargs": {"diagonal_fraction": float(diagonal_fraction)}}
                   if diagonal_fraction else None)
    distiller = distill.BlockDistiller(objective=objective, interp=interp,
                                       loss_kwargs=loss_kwargs, train_kwargs=train_kwargs)
    maps, infos = [], []
    for n in range(1, model.num_blocks + 1):
        path = os.path.join(out_dir, f"block_{n}.msgpack")
        info = {"block": n}
        if os.path.exists(path):
            with open(path, "rb") as f:
                params = flax.serialization.from_bytes(template, f.read())
            info["loaded"] = True
        else:
            k_n = jax.random.fold_in(key, n)
            x_l = block_inputs(workdir, model, params_list, x_train, n, mesh=mesh,
                               labels=push_labels, network=network)
            if max_pairs and len(x_l) > max_pairs:
                x_l = x_l[:max_pairs]
            x_r = np.asarray(lfm.ou_step(jax.random.fold_in(k_n, 0), jax.numpy.asarray(x_l),
                                         model.step_sizes[n - 1]))
            if guided:  # row i of x_l is training row i: its label train_labels[i]
                b = distill.guided_teacher(network, params_list[n - 1], float(guidance_w))
                pairs = (x_l, x_r, train_labels[: len(x_l)])
            else:
                b = distill.velocity_teacher(network, params_list[n - 1])
                pairs = (x_l, x_r)
            t0 = time.perf_counter()
            # fold_in(k_n, 0): the key `distill.distill_lfm_blocks([b], [pairs], ...,
            # key=k_n)` gave its one block before, so the numbers stay the same
            init = (teacher_init(config, fmap, params_list[n - 1], conditional=guided,
                                 key=jax.random.fold_in(k_n, 1))
                    if init_from_teacher else None)
            params = distiller.distill(fmap, b, pairs, key=jax.random.fold_in(k_n, 0),
                                       init_params=init)
            params = jax.device_get(params)
            info["train_time_s"] = time.perf_counter() - t0
            common.save_bytes(path, flax.serialization.to_bytes(params))
            if verbose:
                print(f"distilled block {n}/{model.num_blocks} ({objective}"
                      f"{f', guided w={float(guidance_w):g}' if guided else ''}) in "
                      f"{info['train_time_s']:.1f}s -> {path}", flush=True)
        maps.append((fmap, params))
        infos.append(info)
    return maps, infos



def default_out_dir(workdir: str, objective: str, guidance_w=None) -> str:
    """workdir/distill/<objective>, or workdir/distill/<objective>_w<w> when guided."""
    name = objective if guidance_w is None else f"{objective}_w{float(guidance_w):g}"
    return os.path.join(workdir, "distill", name)


def run(config, workdir: str, *, objective: str = "lmd", steps: int = 1500,
        hidden=(128, 128, 128), unet_channels: int = 0, unet_time_scale: float = 0.0,
        batch_size: int = 256, lr: float = 1e-3, ema_decay: float = 0.995,
        sample_steps=(1, 2, 4), n_samples: int = 2000, out_dir: str = "",
        guidance_w=None, max_pairs: int = 0, verbose: bool = True,
        init_from_teacher: bool = False, learned_weighting: bool = False,
        warmup_steps: int = 0, diagonal_fraction: float = 0.0) -> dict:
    """experiments/distill_lfm.py: load the LFM trained in workdir, distil its blocks
    (`distill_blocks`, guided at guidance_w when set), compare the generations
    (`distill_eval.compare`) and write table.md and results.json to out_dir (default
    `default_out_dir`). The config is validated (`validation.validate_config`) and
    guidance_w checked (`check_guidance`) before any data is loaded. Returns the
    results.json contents."""
    from lfm_jax import logging as log_lib
    from lfm_jax.runs import distill_eval, validation

    validation.validate_config(config)
    check_guidance(config, guidance_w)
    check_warmup(steps, warmup_steps)
    check_diagonal_fraction(diagonal_fraction)
    if init_from_teacher:
        check_init_from_teacher(config, unet_channels, unet_time_scale)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    out = out_dir or default_out_dir(workdir, objective, guidance_w)
    os.makedirs(out, exist_ok=True)
    dataset = common.load_data(config)
    mesh = common.make_mesh(config)
    example_shape = tuple(dataset.train.shape[1:])
    network, model, params_list = load_trained_blocks(config, workdir, example_shape)
    N = model.num_blocks
    guided = "" if guidance_w is None else f"  guidance w={float(guidance_w):g}"
    if verbose:
        print(f"devices: {jax.devices()}  data: {config.data.name}  LFM blocks: {N}  "
              f"objective: {objective}{guided}")
    t0 = time.perf_counter()
    maps, infos = distill_blocks(
        config, workdir, network, model, params_list, dataset.train, out_dir=out,
        objective=objective, hidden=tuple(hidden), steps=steps, batch_size=batch_size,
        lr=lr, ema_decay=ema_decay, unet_channels=unet_channels,
        unet_time_scale=unet_time_scale, mesh=mesh, max_pairs=max_pairs,
        verbose=verbose, guidance_w=guidance_w,
        train_labels=getattr(dataset, "train_labels", None),
        init_from_teacher=init_from_teacher, learned_weighting=learned_weighting,
        warmup_steps=warmup_steps, diagonal_fraction=diagonal_fraction)
    distill_time = time.perf_counter() - t0

    rows = distill_eval.compare(config, model, params_list, maps, dataset, out,
                                sample_steps=[int(k) for k in sample_steps],
                                n_samples=n_samples, mesh=mesh, guidance_w=guidance_w,
                                network=network)
    unet = config.model.get("kind", "mlp") == "unet"
    student = (student_description(config, unet_channels, unet_time_scale) if unet
               else {"kind": "mlp", "hidden": list(hidden)})
    if guidance_w is not None:
        student["num_classes"] = int(config.model.num_classes)
    student.update(_options_record(init_from_teacher, learned_weighting, warmup_steps,
                                   diagonal_fraction))
    how = ("" if guidance_w is None else
           f", guided at w={float(guidance_w):g} (class-conditional students; sample i "
           f"has label i % {int(config.model.num_classes)})")
    table = distill_eval.table(rows) + (
        f"\n\n{config.data.name}, {N} LFM blocks, objective {objective}{how}, "
        f"{steps} steps/block, student {student}, {n_samples} samples from "
        f"the same noise per method ({len(dataset.test)} test points); distillation "
        f"{distill_time:.1f}s this run ({sum('loaded' in i for i in infos)} blocks "
        f"loaded from checkpoints).")
    if verbose:
        print(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    results = {"workdir": workdir, "objective": objective, "num_blocks": N,
               "steps": steps, "student": student, "n_samples": n_samples,
               "guidance_w": None if guidance_w is None else float(guidance_w),
               "distill_time_s": distill_time, "blocks": infos, "rows": rows,
               "out_dir": out}
    log_lib.write_json(os.path.join(out, "results.json"), results)
    return results


def _options_record(init_from_teacher, learned_weighting, warmup_steps,
                    diagonal_fraction) -> dict:
    """The distillation options that are set (not at their defaults), as recorded in
    settings.json and results.json."""
    record = {"init_from_teacher": bool(init_from_teacher),
              "learned_weighting": bool(learned_weighting),
              "warmup_steps": int(warmup_steps),
              "diagonal_fraction": float(diagonal_fraction)}
    return {k: v for k, v in record.items() if v}


def check_warmup(steps: int, warmup_steps: int) -> None:
    """ValueError unless warmup_steps is 0 or in [1, steps) (before any work; steps 0
    leaves the students untrained)."""
    w = int(warmup_steps)
    if w < 0 or (w and w >= int(steps)):
        raise ValueError(f"warmup_steps must be 0 or in [1, steps={steps}), got "
                         f"{warmup_steps}")


def check_diagonal_fraction(diagonal_fraction: float) -> None:
    """ValueError unless 0 <= diagonal_fraction < 1 (before any work)."""
    if not 0.0 <= float(diagonal_fraction) < 1.0:
        raise ValueError(f"diagonal_fraction must be in [0, 1), got {diagonal_fraction}")


def check_init_from_teacher(config, unet_channels: int = 0,
                            unet_time_scale: float = 0.0) -> None:
    """ValueError unless the students can start from their teachers' params
    (`teacher_init`): U-Net blocks (model.kind "unet"), students of the blocks' width
    and time scale (unet_channels / unet_time_scale 0 or equal to the blocks')."""
    from lfm_jax.runs import models

    m = config.model
    if m.get("kind", "mlp") != "unet":
        raise ValueError("init_from_teacher needs U-Net blocks (config.model.kind='unet'): "
                         "the student is then the blocks' U-Net with a second time input; "
                         f"this LFM's blocks are {m.get('kind', 'mlp')!r}")
    kw = models.unet_kwargs(config, ())
    if unet_channels and int(unet_channels) != kw["channels"]:
        raise ValueError(f"init_from_teacher needs students of the blocks' width "
                         f"({kw['channels']} channels); unet_channels={unet_channels}")
    if unet_time_scale and float(unet_time_scale) != kw["time_scale"]:
        raise ValueError(f"init_from_teacher needs students of the blocks' time scale "
                         f"({kw['time_scale']:g}); unet_time_scale={unet_time_scale:g} "
                         f"(leave it 0)")


def teacher_init(config, fmap, velocity_params, *, conditional: bool, key):
    """The student's params as one Euler step of block velocity v's reversed field,
    X_{s,t}(x) = x + (t - s) (-v(1 - s, x)) (`unet.two_time_params_from_velocity`):
    a class-conditional student (conditional) keeps the label embedding (its
    conditional field, the guided field at w = 1); an unconditional student of a
    class-conditional LFM gets the null field (the null label folded in). Parts of
    the flow map beyond the network (a loss weighting) come from fmap.init(key)."""
    from lfm_jax import unet
    from lfm_jax.runs import models

    kw = models.unet_kwargs(config, fmap.example_shape)
    k = int(config.model.get("num_classes", 0))
    net = unet.two_time_params_from_velocity(
        velocity_params, channels=kw["channels"], time_scale=kw["time_scale"],
        reverse=True, fold_label=k if (k > 0 and not conditional) else None)
    params = dict(fmap.init(key))
    params["net"] = net
    return params


def student_description(config, unet_channels: int = 0,
                        unet_time_scale: float = 0.0) -> dict:
    """The U-Net student's settings (recorded in settings.json; channels 0: the
    preset's)."""
    m = config.model
    return {"kind": "unet", "preset": m.unet_preset,
            "channels": int(unet_channels or m.unet_channels),
            "time_scale": float(unet_time_scale or m.unet_time_scale)}


def student_flow_map(config, example_shape, hidden=(256, 256, 256),
                     unet_channels: int = 0, unet_time_scale: float = 0.0,
                     conditional: bool = False, learned_weighting: bool = False):
    """The flow map every block is distilled into (one object, so all blocks share
    its compiled functions).

    model.kind "mlp": `flow_map.make_flow_map` of width `hidden` (config.model's
    activation, Fourier features and `runs.models.mlp_settings`: the blocks' MLP
    family, e.g. the official configuration's raw time input, torch init and softplus
    beta 20). model.kind "unet": an UNCONDITIONAL two-time U-Net of the blocks' preset (`runs.flow_map.make_student`; unet_channels > 0
    overrides the width, unet_time_scale > 0 the time embedding's scale). A class-conditional LFM is distilled through its null-class
    field v_n(t, x, null) (the unguided marginal flow, which carries q_{n-1} to q_n
    like the labelled fields do on average), and compared with the LFM's unguided
    ODE generation, unless `conditional`: then the student is the same family with
    the LFM's config.model.num_classes, X(s, t, x, y) (for "mlp" the conditional
    `flow_map.make_flow_map` of width `hidden`), for guided distillation (`distill_blocks`'s
    guidance_w). learned_weighting: the student carries a learned log-variance
    lv(s, t) (`flow_map.loss_weighting`) that weights its loss as exp(-lv) L + lv, so
    that short and long jumps count alike (without it the long jumps' larger residuals
    dominate the gradient).
    """
    from lfm_jax import flow_map as flow_map_lib
    from lfm_jax.runs import models

    m = config.model
    k = int(m.get("num_classes", 0))
    if conditional and k <= 0:
        raise ValueError("a class-conditional student needs config.model.num_classes > 0")
    if m.get("kind", "mlp") == "unet":
        from lfm_jax.runs import flow_map as flow_map_job

        student = copy.deepcopy(config)
        with student.unlocked():
            student.model.num_classes = k if conditional else 0
            if unet_channels:
                student.model.unet_channels = int(unet_channels)
            if unet_time_scale:
                student.model.unet_time_scale = float(unet_time_scale)
            student.flow_map.learned_weighting = bool(learned_weighting)
        return flow_map_job.make_student(student, tuple(example_shape))
    return flow_map_lib.make_flow_map(tuple(example_shape), hidden=tuple(hidden),
                                      num_classes=k if conditional else None,
                                      activation=m.activation,
                                      num_frequencies=m.num_frequencies,
                                      max_frequency=m.max_frequency,
                                      learned_weighting=bool(learned_weighting),
                                      **models.mlp_settings(config))
