"""A distilled LFM against its teacher, from the same noise (experiments/distill_lfm.py).

Methods (`generators`), each timed with `timing.timed` (best of 3 after a warm-up):
- "lfm_ode": the LFM's own generation T_1^{-1} ... T_N^{-1}(z) with config.eval.ode
  (adaptive on a GPU config): the teacher, and the reference of every distance;
- "distilled", K: N x K flow-map calls, K steps of every block's distilled inverse
  (`distill.generate_lfm_sharded`);
- "lfm_euler", K: K Euler steps of every block's ODE (the same N x K velocity calls).
Rows hold the sampling wall time, the speed-up against lfm_ode, and the mean squared
distance to the lfm_ode sample of the same noise (summed over coordinates, averaged
over samples whose rows are finite in both). Vector data adds energy distance, MMD and
sliced W2 against the test set and the energy distance to the lfm_ode samples (plus a
"noise" row, z itself), and draws samples_lfm_ode.png / samples_distilled_K<K>.png.
Images (`image_data.ImageData`) save every method's samples instead
(samples_<method>[_k<K>].npz, uint8, and .png: `image_eval.save_samples`) and, with
config.eval.classifier_workdir and / or config.eval.inception_weights set, add the
scores against the test images (`image_eval.sample_scorer`: fd_classifier, NOT
Inception FID; fid_inception, standard FID by pytorch-fid, biased upward at small N).

Guided distillation (`compare(guidance_w=w)`, maps of `lfm_distill.distill_blocks(
guidance_w=w)`): sample i has the label i % num_classes for every method; lfm_ode is
the LFM's guided generation at w with those labels (every block's guided field,
`image_eval.lfm_generate`, as the LFM job's guided samples), lfm_euler the same field
by K Euler steps, distilled the class-conditional students given the labels; the
samples are saved with their labels (.png one row per class) and, with the
classifier, the rows add its "accuracy" of the samples against their labels.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from lfm_jax import distill, lfm, ode, plots, timing
from lfm_jax.runs import common, image_data, image_eval


def generators(config, model, params_list, maps, sample_steps, *, mesh=None,
               labels=None, guidance_w=None, network=None) -> list:
    """[(method, K, network calls or None, generate(z) -> samples)] in table order (see
    the module doc); maps: [(flow_map, params)] per block (`lfm_distill.distill_blocks`).

    Guided (guidance_w = w, labels (n,) the label of each row of z, network the LFM's
    class-conditional velocity network): lfm_ode and lfm_euler solve every block's
    guided field at w with row i's label (`image_eval.lfm_generate`), and the distilled
    maps are conditional on the labels (`distill.generate_lfm_sharded(labels=)`: the
    students of guided distillation learned the guided maps). Network calls count
    flow-map or velocity calls per block step (a guided velocity call evaluates both
    branches in one batched call)."""
    from lfm_jax.runs import lfm as lfm_run

    guided = guidance_w is not None
    if guided and (labels is None or network is None):
        raise ValueError("guided generators need labels and the LFM's network")
    teacher = lfm_run.eval_model(config, model)
    chunk = config.eval.chunk_size
    opts = teacher.ode
    label = "adaptive" if opts.num_steps is None else f"{opts.solver} x{opts.num_steps}"

    def solve(m):  # the LFM's generation with model m's ODE options
        if guided:
            return lambda z: image_eval.lfm_generate(m, network, params_list, z, labels,
                                                     float(guidance_w), mesh=mesh)
        return lambda z: m.push_backward(params_list, z, mesh=mesh)

    out = [("lfm_ode", label, None, solve(teacher))]
    for k in sample_steps:
        k, calls = int(k), model.num_blocks * int(k)
        euler = dataclasses.replace(teacher, ode=ode.Options(solver="euler", num_steps=k))
        out.append(("distilled", k, calls, lambda z, k=k: distill.generate_lfm_sharded(
            maps, z, k, mesh=mesh, chunk_size=chunk, labels=labels if guided else None)))
        out.append(("lfm_euler", k, calls, solve(euler)))
    return out


def squared_distance(samples, reference) -> float:
    """Mean over rows finite in both of |samples_i - reference_i|^2 (summed over the
    row's coordinates)."""
    a, b = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    good = ~(lfm.failed_rows(a) | lfm.failed_rows(b))
    d = np.sum(((a - b) ** 2).reshape(len(a), -1), axis=1)
    return float(np.mean(d[good])) if good.any() else float("nan")


def compare(config, model, params_list, maps, dataset, out_dir: str, *,
            sample_steps=(1, 2, 4), n_samples: int = 2000, mesh=None,
            guidance_w=None, network=None) -> list:
    """Generate with every method of `generators` from the same noise, write the
    samples (module doc) to out_dir and return the rows (dicts).

    guidance_w = w (maps from guided distillation, `lfm_distill.distill_blocks`; image
    data of a class-conditional LFM): sample i has the label i % num_classes for every
    method, the LFM rows are guided at w, the distilled rows conditional on the
    labels; the samples are saved with their labels and scored with them (the
    classifier's "accuracy" of the samples against their labels); rows carry
    "guidance_w". network: the LFM's velocity network (default: rebuilt from config)."""
    is_image = isinstance(dataset, image_data.ImageData)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    k_z, k_metric = jax.random.split(key)
    shape = tuple(dataset.train.shape[1:])
    z = np.asarray(jax.random.normal(k_z, (int(n_samples),) + shape))
    labels = None
    if guidance_w is not None:
        if not is_image:
            raise ValueError("guided comparison needs labelled image data")
        network = common.velocity_network(config, shape) if network is None else network
        num_classes = getattr(network, "num_classes", None)
        if num_classes is None:
            raise ValueError("guidance_w needs a class-conditional LFM network")
        labels = np.arange(len(z), dtype=np.int32) % int(num_classes)
    test = np.asarray(dataset.test)
    score = image_eval.sample_scorer(config, test, shape) if is_image else None
    rows, ref = [], None
    N = model.num_blocks
    for method, k, calls, generate in generators(config, model, params_list, maps,
                                                 sample_steps, mesh=mesh, labels=labels,
                                                 guidance_w=guidance_w, network=network):
        samples, seconds = timing.timed(generate, z)
        samples = np.asarray(samples)
        ref = samples if ref is None else ref
        todo = [(method, k, calls, samples, seconds)]
        if method == "lfm_ode" and not is_image:
            todo.append(("noise", 0, 0, z, 0.0))
        for method, k, calls, x, seconds in todo:
            row = {"method": method, "K": k, "network_calls": calls, "time_s": seconds,
                   "n_failed": int(lfm.failed_rows(x).sum()),
                   "mse_to_ode": squared_distance(x, ref)}
            name = method if method in ("lfm_ode", "noise") else f"{method}_k{k}"
            if guidance_w is not None:
                row["guidance_w"] = float(guidance_w)
            if is_image:
                row["mse_to_ode_per_dim"] = row["mse_to_ode"] / x[0].size
                tag = "" if guidance_w is None else f", w={float(guidance_w):g}"
                image_eval.save_samples(out_dir, name, x, labels,
                                        title=f"{name}, {N} blocks{tag}")
                if score is not None:
                    row.update(score(x, labels))
            else:
                row.update(common.sample_metrics(k_metric, x, test))
                row["energy_distance_to_ode"] = common.sample_metrics(
                    k_metric, x, ref)["energy_distance"]
                if method != "lfm_euler" and method != "noise":
                    title = ("LFM ODE" if method == "lfm_ode" else f"distilled, K={k}")
                    png = "samples_lfm_ode.png" if method == "lfm_ode" else \
                        f"samples_distilled_K{k}.png"
                    plots.plot_samples(os.path.join(out_dir, png), x, data=test,
                                       title=f"{title} ({N} blocks)")
            rows.append(row)
            print(f"{method:>10s} K={str(k):>9s} MSE-ode={row['mse_to_ode']:.4f} "
                  f"{1e3 * seconds:9.2f} ms", flush=True)
    t_ode = rows[0]["time_s"]
    for r in rows:
        r["speedup_vs_ode"] = t_ode / r["time_s"] if r["time_s"] else None
    return rows


VECTOR_COLUMNS = (("energy dist", "energy_distance", "{:.4f}"), ("MMD", "mmd", "{:.5f}"),
                  ("sliced W2", "sliced_w2", "{:.4f}"),
                  ("ED to ODE samples", "energy_distance_to_ode", "{:.4f}"))


def table(rows) -> str:
    """Markdown table of the rows of `compare` (the vector metrics, or any classifier
    scores, when the rows have them)."""
    extra = [c for c in VECTOR_COLUMNS if c[1] in rows[0]]
    extra += [(n, n, "{:.4f}") for n in rows[0] if n in (*image_eval.SCORES, "accuracy")]
    cols = [("method", "method", "{}"), ("K per block", "K", "{}"),
            ("network calls", "network_calls", "{}"), *extra,
            ("MSE to ODE samples", "mse_to_ode", "{:.4f}"), ("failed", "n_failed", "{}")]
    lines = ["| " + " | ".join(c[0] for c in cols) + " | time (ms) | speed-up vs ODE |",
             "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = ["ODE solve" if r[k] is None else f.format(r[k]) for _, k, f in cols]
        sp = "" if r["speedup_vs_ode"] is None else f"{r['speedup_vs_ode']:.1f}x"
        lines.append("| " + " | ".join(cells) + f" | {1e3 * r['time_s']:.2f} | {sp} |")
    return "\n".join(lines)
