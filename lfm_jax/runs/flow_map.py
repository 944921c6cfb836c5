"""Flow-map job (`config.method = "flow_map"`): teacher (if the objective needs one),
flow map training with checkpoints, few-step evaluation.

1. Teacher objectives (lmd, emd, pfmm: `losses.Objective.needs_teacher`): a flow-matching
   velocity is trained by `lfm_jax.runs.flow_matching` in `<workdir>/teacher` (itself resumable),
   or restored from `config.flow_map.teacher_workdir`.
2. The flow map is trained with `lfm_jax.train` and checkpointed in `<workdir>/ckpt`;
   re-running the same command resumes it.
3. Samples with K = config.flow_map.sample_steps network calls and their sampling
   wall time. Vector data: energy distance, MMD and sliced W2 against held-out data,
   samples.png (largest K up to 4). Images (config.data.name digits / mnist / cifar10,
   model.kind "unet": the two-time U-Net; training batches dequantised afresh every
   step): samples_k<K>.npz (uint8) and samples_k<K>.png per K, and the classifier
   scores / standard FID when config.eval.classifier_workdir / inception_weights is
   set (`evaluate_images`). metrics.json.

Class-conditional maps (image data, config.model.num_classes > 0): the student is
X(s, t, x, y) (`make_student`), trained on labelled batches with labels dropped to the
null class with probability config.fm.p_uncond (`distill.make_loss(label_dropout=)`;
a teacher objective's FM teacher is class-conditional too and bound to the same
label); each K is evaluated per guidance weight in config.eval.guidance_ws with the
guided map (`evaluate_guided`: samples_k<K>_w<w>.npz / .png, fd_classifier_K<K>_w<w>,
accuracy_K<K>_w<w>, best_w_K<K>).
"""

from __future__ import annotations

import copy
import os

import jax
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import distill, distributed, flow_map, interpolants, lfm, losses
from lfm_jax import networks, phases, plots, timing, train
from lfm_jax.runs import common, image_data, image_eval, jobs


def _teacher(config, workdir, example_shape):
    """Teacher velocity b(t, x): restored from teacher_workdir or trained here."""
    from lfm_jax.runs import flow_matching as fm_run

    fcfg = config.flow_map
    tdir = fcfg.teacher_workdir or os.path.join(workdir, "teacher")
    net = common.velocity_network(config, example_shape)
    if not fcfg.teacher_workdir and not _finished(tdir):
        tconfig = copy.deepcopy(config)
        with tconfig.unlocked():
            tconfig.method = "fm"
            tconfig.train.steps = fcfg.teacher_steps
            tconfig.fm.interpolant = fcfg.interpolant
        print(f"training the flow-matching teacher in {tdir}")
        fm_run.run(tconfig, tdir)
    elif not os.path.isdir(os.path.join(tdir, "ckpt")):
        raise FileNotFoundError(f"teacher_workdir {tdir!r} holds no ckpt/ folder; train a "
                                "teacher with method=fm there first")
    opt = common.optimizer(config, fcfg.teacher_steps)
    template = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(0)),
                                        opt)
    params = distill.load_velocity_params(os.path.join(tdir, "ckpt"), template,
                                          use_ema=config.eval.use_ema)
    return distill.velocity_teacher(net, params)


def _finished(tdir) -> bool:
    """The teacher job in tdir ran to its end (metrics.json written), so it is not run
    again (a restart after the flow map diverged may change train.lr)."""
    return os.path.exists(os.path.join(tdir, "metrics.json"))


def sampler_kwargs(section, sampler: str, total_steps: int) -> dict:
    """Keyword options of the (s, t) sampler `sampler` from the flow_map config section:
    diagonal_fraction for "diagonal", initial_gap and anneal_steps (0: half of
    total_steps) for "annealed"."""
    if sampler == "diagonal":
        return {"diagonal_fraction": section.diagonal_fraction}
    if sampler == "annealed":
        return {"initial_gap": section.initial_gap,
                "anneal_steps": section.anneal_steps or max(total_steps // 2, 1)}
    return {}


def make_flow_map_and_loss(config, objective: str, example_shape, teacher=None):
    """The student `FlowMap` (config.model) and its batch loss for `objective`
    (config.flow_map settings), for `train.make_train_step(..., loss_takes_step=True)`.

    The (s, t) sampler is config.flow_map.time_sampler, or the objective's default when
    that is empty; its options (e.g. diagonal_fraction) apply either way. The
    objective's own options (`losses.Objective.options`) are read from the section
    when it has a key of that name. A class-conditional student (config.model.
    num_classes > 0) trains on labelled batches with labels dropped to the null class
    with probability config.fm.p_uncond (`distill.make_loss(label_dropout=...)`).
    """
    fcfg = config.flow_map
    record = losses.get_objective(objective)
    fmap = make_student(config, example_shape)
    sampler = fcfg.time_sampler or record.time_sampler
    options = {k: fcfg[k] for k in record.options if k in fcfg}
    if fmap.num_classes is not None:  # classifier-free guidance training
        options["label_dropout"] = float(config.fm.p_uncond)
    loss_fn = distill.make_loss(
        objective, fmap, teacher, interp=interpolants.get(fcfg.interpolant),
        time_sampler=sampler,
        sampler_kwargs=sampler_kwargs(fcfg, sampler, config.train.steps),
        intermediate=fcfg.intermediate, teacher_substeps=fcfg.teacher_substeps, **options)
    return fmap, loss_fn


def make_student(config, example_shape) -> flow_map.FlowMap:
    """The student FlowMap of config.model: an MLP (`flow_map.make_flow_map`) or, with
    model.kind "unet", `FlowMap(network=models.network(config, shape, num_times=2))`.
    config.model.num_classes > 0: a class-conditional two-time network (the U-Net's
    label embedding, or `flow_map.make_flow_map(num_classes=...)`), X(s, t, x, y) with
    the null label num_classes."""
    from lfm_jax.runs import models

    m, fcfg = config.model, config.flow_map
    if m.get("kind", "mlp") == "unet":
        weighting = flow_map.loss_weighting() if fcfg.learned_weighting else None
        return flow_map.FlowMap(network=models.network(config, example_shape, num_times=2),
                                weighting=weighting)
    return flow_map.make_flow_map(example_shape, hidden=tuple(m.hidden),
                                  num_classes=int(m.get("num_classes", 0)) or None,
                                  activation=m.activation,
                                  num_frequencies=m.num_frequencies,
                                  max_frequency=m.max_frequency,
                                  zero_init_output=fcfg.zero_init_output,
                                  learned_weighting=fcfg.learned_weighting,
                                  **models.mlp_settings(config))


@jobs.job
def run(config, workdir: str, clock=None) -> dict:
    """Teacher (if needed), flow-map training (resumable) and few-step evaluation;
    returns the final metrics (`jobs.job`: the config is validated and recorded first;
    clock: the `phases.PhaseClock` of the run's phases)."""
    fcfg, tcfg, ecfg = config.flow_map, config.train, config.eval
    with phases.phase(clock, "data"):
        dataset = common.load_data(config)
    example_shape = dataset.train.shape[1:]
    is_image = isinstance(dataset, image_data.ImageData)
    image_data.check_classes(config, dataset)  # labels: image data sets only
    mesh = common.make_mesh(config)
    name = fcfg.objective
    record = losses.get_objective(name)
    with phases.phase(clock, "teacher"):
        teacher = _teacher(config, workdir, example_shape) if record.needs_teacher else None

    fmap, loss_fn = make_flow_map_and_loss(config, name, example_shape, teacher)

    opt = common.optimizer(config)
    if is_image:  # uint8 training images, dequantised afresh every step
        images_of = image_data.sample_batch(tcfg.batch_size, config.data.random_flip)
        sample_batch = (images_of if fmap.num_classes is not None  # {"x", "y"}
                        else lambda k, d: images_of(k, d)["x"])
        train_np = image_data.train_data(dataset)
    else:
        sample_batch, train_np = (lambda k, d: data_lib.sample_batch(k, d, tcfg.batch_size),
                                  np.asarray(dataset.train))
    step_fn = train.make_train_step(
        loss_fn, opt, loss_takes_step=True, sample_batch=sample_batch,
        steps_per_call=tcfg.steps_per_call, ema_decay=tcfg.ema_decay, mesh=mesh)
    key = jax.random.PRNGKey(config.seed)
    k_init, k_state, k_eval = jax.random.split(key, 3)
    state = train.create_train_state(k_state, fmap.init(k_init), opt, mesh=mesh)
    train_data = distributed.replicate(train_np, mesh)
    with phases.phase(clock, "train"):
        state, train_time, _ = common.resumable_fit(config, state, step_fn, train_data,
                                                    workdir, name)

    params = distributed.to_host(state.ema_params if ecfg.use_ema else state.params)
    z = jax.random.normal(k_eval, (ecfg.n_samples, *example_shape))
    results = {"method": "flow_map", "objective": name, "steps": int(state.step),
               "train_time_s": train_time, "num_params": networks.count_params(params),
               "sampling": []}
    evaluate = evaluate_images if is_image else evaluate_vectors
    summary = evaluate(config, fmap, params, z, dataset, workdir, results, k_eval,
                       clock=clock, mesh=mesh)
    jobs.write_metrics(workdir, results, clock)
    return {k: v for k, v in results.items() if k != "sampling"} | summary


def evaluate_vectors(config, fmap, params, z, dataset, workdir, results, key, *,
                     clock=None, mesh=None) -> dict:
    """Vector data: per K, energy distance, MMD, sliced W2 against the test set and
    sampling wall time (rows appended to results["sampling"]); samples.png of the
    largest K up to 4. Returns {"energy_distance_K<K>": ...}."""
    X = fmap.bind(params)
    test = np.asarray(dataset.test)
    results["notes"] = {"energy_distance": common.ENERGY_DISTANCE_NOTE}
    best = None
    for k in config.flow_map.sample_steps:
        sampler = jax.jit(lambda zz, k=k: flow_map.sample(X, zz, flow_map.uniform_grid(k)))
        with phases.phase(clock, "sampling (timed, 4 calls per K)"):
            samples, seconds = timing.timed(sampler, z)
        samples = common.to_numpy(samples)
        row = {"steps": int(k), "time_s": seconds,
               **common.sample_metrics(jax.random.fold_in(key, k), samples, test)}
        results["sampling"].append(row)
        print(f"K={k}: energy distance {row['energy_distance']:.4f} (unbiased, can be < 0; "
              f"biased {row['energy_distance_biased']:.4f})  sliced W2 "
              f"{row['sliced_w2']:.4f}  {1e3 * seconds:.2f} ms")
        if k <= 4:
            best = (k, samples)
    if best is not None:
        with phases.phase(clock, "plots"):
            plots.plot_samples(os.path.join(workdir, "samples.png"), best[1], data=test,
                               title=f"{config.flow_map.objective}, K={best[0]}")
    return {f"energy_distance_K{r['steps']}": r["energy_distance"]
            for r in results["sampling"]}


def evaluate_images(config, fmap, params, z, dataset, workdir, results, key, *,
                    clock=None, mesh=None) -> dict:
    """Images: per K, the samples (unconditional) and their sampling wall time (best
    of 3 after a warm-up, chunks of eval.chunk_size per device); samples_k<K>.npz
    (uint8) and samples_k<K>.png (`image_eval.save_samples`); with
    eval.classifier_workdir and / or eval.inception_weights set, the scores of the
    samples against the test images (`image_eval.sample_scorer`: fd_classifier,
    fid_inception; what they are in results["notes"]). No 2-D sample metrics. Returns
    {"time_s_K<K>": ..., and "<score>_K<K>" per score}. A class-conditional map goes
    to `evaluate_guided` instead."""
    test = np.asarray(dataset.test)
    with phases.phase(clock, "sample scores"):
        score = image_eval.sample_scorer(config, test, dataset.example_shape)
    if fmap.num_classes is not None:
        return evaluate_guided(config, fmap, params, z, score, workdir, results,
                               clock=clock, mesh=mesh)
    summary = {}
    for k in config.flow_map.sample_steps:
        with phases.phase(clock, "sampling (timed, 4 calls per K)"):
            samples, seconds = timing.timed(
                lambda zz, k=k: distill.generate_lfm_sharded(
                    [(fmap, params)], zz, k, mesh=mesh, chunk_size=config.eval.chunk_size),
                np.asarray(z))
        row = {"steps": int(k), "time_s": seconds, "n_samples": int(len(samples)),
               "n_samples_failed": int(lfm.failed_rows(samples).sum())}
        with phases.phase(clock, "plots"):
            image_eval.save_samples(workdir, f"k{k}", samples,
                                    title=f"{config.flow_map.objective}, K={k}")
        if score is not None:
            with phases.phase(clock, "sample scores"):
                row.update(score(samples))
            results.setdefault("notes", {}).update(row.pop("notes"))
        results["sampling"].append(row)
        summary.update({f"{n}_K{k}": v for n, v in row.items()
                        if n not in ("steps", "n_samples")})
        print(f"K={k}: {1e3 * seconds:.2f} ms for {len(samples)} images"
              + "".join(f"  {n} {row[n]:.4f}" for n in row if n in image_eval.SCORES))
    return summary


def evaluate_guided(config, fmap, params, z, score, workdir, results, *, clock=None,
                    mesh=None) -> dict:
    """Images from a class-conditional map: per K and per guidance weight w of
    config.eval.guidance_ws, the K-step samples of the guided map
    X_w = X_null + w (X_y - X_null) (`guidance.guided_flow_map`) from the same noise z
    and the same labels (i % num_classes for row i) for every w; their sampling wall
    time at the first w (best of 3 after a warm-up; the guided cost does not depend on
    w: both branches in one call); samples_k<K>_w<w>.npz (uint8 images and labels) and
    samples_k<K>_w<w>.png (one row per class); with a scorer (`image_eval.
    sample_scorer`) the scores of the samples against the test images and, with the
    classifier, the accuracy of the classifier on the samples against their labels.
    results["sampling"] gets one row per K with a "guidance" list (one dict per w).
    Returns {"time_s_K<K>", "n_samples_failed_K<K>_w<w>", "<score>_K<K>_w<w>"
    (fd_classifier, fid_inception), "accuracy_K<K>_w<w>", and per K over the weights
    "best_w_K<K>" / "fd_classifier_best_K<K>" (lowest fd_classifier) and
    "best_w_inception_K<K>" / "fid_inception_best_K<K>"}."""
    ws = [float(w) for w in config.eval.guidance_ws]
    if not ws:
        raise ValueError("config.eval.guidance_ws is empty: a class-conditional flow map "
                         "is evaluated at each guidance weight in it (e.g. (1.0,))")
    z = np.asarray(z)
    labels = np.arange(len(z), dtype=np.int32) % int(fmap.num_classes)
    chunk = config.eval.chunk_size
    summary = {}
    for k in config.flow_map.sample_steps:
        row = {"steps": int(k), "n_samples": int(len(z)), "guidance": []}
        dists = {m: {} for m in image_eval.SCORES}
        for j, w in enumerate(ws):
            def generate(zz, k=k, w=w):
                return distill.generate_lfm_sharded(
                    [(fmap, params)], zz, k, mesh=mesh, chunk_size=chunk, labels=labels,
                    guidance_w=w)

            with phases.phase(clock, "sampling (timed, 4 calls per K)" if j == 0
                              else "sampling"):
                if j == 0:
                    samples, row["time_s"] = timing.timed(generate, z)
                else:
                    samples = generate(z)
            tag = f"_w{w:g}"
            entry = {"w": w, "n_samples_failed": int(lfm.failed_rows(samples).sum())}
            with phases.phase(clock, "plots"):
                image_eval.save_samples(workdir, f"k{k}{tag}", samples, labels,
                                        title=f"{config.flow_map.objective}, K={k}, w={w:g}")
            if score is not None:
                with phases.phase(clock, "sample scores"):
                    s = score(samples, labels)
                results.setdefault("notes", {}).update(s.pop("notes"))
                entry.update(s)
                for m in image_eval.SCORES:
                    if m in s:
                        dists[m][w] = s[m]
            row["guidance"].append(entry)
            summary.update({f"{n}_K{k}{tag}": v for n, v in entry.items() if n != "w"})
            print(f"K={k} w={w:g}: " + "  ".join(
                f"{n} {entry[n]:.4f}" for n in (*image_eval.SCORES, "accuracy")
                if n in entry), flush=True)
        best = image_eval.best_weights(dists)
        row.update(best)
        summary.update({f"{n}_K{k}": v for n, v in best.items()})
        summary[f"time_s_K{k}"] = row["time_s"]
        results["sampling"].append(row)
        print(f"K={k}: {1e3 * row['time_s']:.2f} ms for {len(z)} guided images", flush=True)
    return summary
