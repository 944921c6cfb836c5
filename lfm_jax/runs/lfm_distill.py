"""Local Flow Matching distillation: each trained block's map distilled into a flow map.

`load_trained_blocks` reads an LFM trained in a workdir (`lfm_blocks.train_blocks`),
`block_inputs` gives block n's input data x_l ~ q_{n-1} (read from the block artefacts,
`block_store`, or pushed again), and `distill_blocks` distils every block (`distill.distill_lfm_blocks`),
saving each distilled block so that a rerun resumes.
"""

from __future__ import annotations

import copy
import json
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


def block_inputs(workdir: str, model, params_list, x_train, n: int, *, mesh=None):
    """x_l ~ q_{n-1} for block n: the training set pushed through blocks 1..n-1, read
    from block n-1's artefacts (pushed again, and saved, if missing or damaged)."""
    if n == 1:
        return np.asarray(x_train)
    with block_store.BlockArtefacts(workdir, n - 1) as store:
        x = store.train_pushed(recover=True)
        if x is None:
            x = lfm_parts.push_training_data(
                model, params_list[n - 2],
                block_inputs(workdir, model, params_list, x_train, n - 1, mesh=mesh),
                n - 1, mesh=mesh)
            store.save(train_pushed=x)
    return x


def distill_blocks(config, workdir: str, network, model, params_list, x_train, *,
                   out_dir: str, objective: str = "lmd",
                   hidden=(256, 256, 256), steps: int = 2000, batch_size: int = 256,
                   lr: float = 1e-3, ema_decay: float = 0.995, steps_per_call: int = 100,
                   max_pairs: int = 0, unet_channels: int = 0,
                   unet_time_scale: float = 0.0, key=None, mesh=None,
                   verbose: bool = True):
    """Distil every block's inverse into a flow map (`distill.distill_lfm_blocks`).

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

    Returns:
      ([(flow_map, params)] in block order, [per-block info dicts]).
    """
    from lfm_jax import distill, losses

    losses.get_objective(objective)  # an unknown name fails before any work
    mesh = common.make_mesh(config) if mesh is None else mesh
    os.makedirs(out_dir, exist_ok=True)
    settings = {"objective": objective, "hidden": list(hidden), "steps": int(steps),
                "batch_size": int(batch_size), "lr": float(lr), "ema_decay": float(ema_decay),
                "max_pairs": int(max_pairs), "interpolant": config.lfm.interpolant,
                "num_blocks": model.num_blocks}
    if config.model.get("kind", "mlp") == "unet":  # (MLP settings files stay as before)
        settings["student"] = student_description(config, unet_channels, unet_time_scale)
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
                            unet_time_scale)
    interp = interpolants.get(config.lfm.interpolant)
    spc = max(1, min(int(steps_per_call), int(steps)))
    train_kwargs = dict(num_steps=int(steps) // spc * spc, batch_size=int(batch_size),
                        lr=float(lr), ema_decay=float(ema_decay), steps_per_call=spc,
                        mesh=mesh)
    template = jax.eval_shape(fmap.init, jax.random.PRNGKey(0))  # structure only
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
            x_l = block_inputs(workdir, model, params_list, x_train, n, mesh=mesh)
            if max_pairs and len(x_l) > max_pairs:
                x_l = x_l[:max_pairs]
            x_r = np.asarray(lfm.ou_step(jax.random.fold_in(k_n, 0), jax.numpy.asarray(x_l),
                                         model.step_sizes[n - 1]))
            b = distill.velocity_teacher(network, params_list[n - 1])
            t0 = time.perf_counter()
            ((_, params),) = distill.distill_lfm_blocks(
                [b], [(x_l, x_r)], lambda: fmap, objective=objective, key=k_n, interp=interp,
                train_kwargs=train_kwargs)
            params = jax.device_get(params)
            info["train_time_s"] = time.perf_counter() - t0
            common.save_bytes(path, flax.serialization.to_bytes(params))
            if verbose:
                print(f"distilled block {n}/{model.num_blocks} ({objective}) in "
                      f"{info['train_time_s']:.1f}s -> {path}", flush=True)
        maps.append((fmap, params))
        infos.append(info)
    return maps, infos



def student_description(config, unet_channels: int = 0,
                        unet_time_scale: float = 0.0) -> dict:
    """The U-Net student's settings (recorded in settings.json; channels 0: the
    preset's)."""
    m = config.model
    return {"kind": "unet", "preset": m.unet_preset,
            "channels": int(unet_channels or m.unet_channels),
            "time_scale": float(unet_time_scale or m.unet_time_scale)}


def student_flow_map(config, example_shape, hidden=(256, 256, 256),
                     unet_channels: int = 0, unet_time_scale: float = 0.0):
    """The flow map every block is distilled into (one object, so all blocks share
    its compiled functions).

    model.kind "mlp": `flow_map.make_flow_map` of width `hidden` (config.model's
    activation and Fourier features). model.kind "unet": an UNCONDITIONAL two-time
    U-Net of the blocks' preset (`runs.flow_map.make_student`; unet_channels > 0
    overrides the width, unet_time_scale > 0 the time embedding's scale). A class-conditional LFM is distilled through its null-class
    field v_n(t, x, null) (the unguided marginal flow, which carries q_{n-1} to q_n
    like the labelled fields do on average), and compared with the LFM's unguided
    ODE generation; guided or per-class generation is not distilled.
    """
    from lfm_jax import flow_map as flow_map_lib

    m = config.model
    if m.get("kind", "mlp") == "unet":
        from lfm_jax.runs import flow_map as flow_map_job

        student = copy.deepcopy(config)
        with student.unlocked():
            student.model.num_classes = 0
            if unet_channels:
                student.model.unet_channels = int(unet_channels)
            if unet_time_scale:
                student.model.unet_time_scale = float(unet_time_scale)
        return flow_map_job.make_student(student, tuple(example_shape))
    return flow_map_lib.make_flow_map(tuple(example_shape), hidden=tuple(hidden),
                                      activation=m.activation,
                                      num_frequencies=m.num_frequencies,
                                      max_frequency=m.max_frequency)
