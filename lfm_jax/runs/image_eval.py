"""Evaluation of image models in the jobs (SPEC section 6): bits per dimension, sample
grids and the trajectory of a few images through the LFM blocks.

- Likelihood: the test NLL (nats) of the dequantised test images; for a
  class-conditional model it is the marginal model of the null class. Reported as
  bits per dimension with the dequantisation correction,
  bpd = NLL / (D ln 2) + 7 (`images.bits_per_dim`): an upper bound on the 8-bit
  discrete model's code length.
- Samples: `eval.grid_per_class` images per class (rows = classes, label of row
  i // per_class) with classifier-free guidance weight `eval.guidance_w`
  (`guidance.guided_apply`), or per_class * 10 unconditional ones; drawn in
  samples_grid.png. Sample metrics of 2-D data (energy distance ...) are not computed
  for images.
- Sample scores (`sample_scores`; config.eval.classifier_workdir and / or
  config.eval.inception_weights set): for each guidance weight w of eval.guidance_ws
  (one unguided set for an unconditional model), eval.fd_samples class-balanced
  images (label i % classes of row i, the same noise for every w) are generated,
  saved as samples_w<w>.npz (samples_uncond.npz; uint8 "images", "labels") and scored
  against the held-out test images (`sample_scorer`):
  - with the repository's classifier (`classifier_eval.score`; NOT Inception FID):
    fd_classifier_w<w>, accuracy_w<w>, best_w (lowest fd) and fd_classifier_best, or
    fd_classifier;
  - with pytorch-fid's Inception network from local weights (`inception_fid`;
    standard FID, biased upward at these sample counts): fid_inception_w<w>,
    best_w_inception and fid_inception_best, or fid_inception.
  fd_sample_time_s_w<w> is the sampling wall time (the first w's includes
  compilation), fd_n_dropped_w<w> the failed samples left out; results["notes"]
  says what each score is.
- Flow maps and distilled LFMs (`save_samples`): samples_<name>.npz (uint8) and a grid
  samples_<name>.png per method / K (one row per class for labelled samples);
  `sample_scorer`: the same optional scores.
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import numpy as np

from lfm_jax import distributed, guidance, images, lfm, ode, phases, plots
from lfm_jax.runs import classifier_eval, common

BPD_NOTE = ("test_bpd = test_nll / (D ln 2) + 7: bits per dimension of the 8-bit images "
            "with the uniform-dequantisation correction (images.bits_per_dim), for "
            "pixels scaled to [-1, 1]")


def sample_labels(network, per_class: int):
    """(n, labels (n,) or None): per_class images of each class, in class order, for a
    class-conditional network; 10 * per_class unlabelled ones otherwise."""
    k = getattr(network, "num_classes", None)
    if k is None:
        return 10 * per_class, None
    return k * per_class, np.repeat(np.arange(k, dtype=np.int32), per_class)


@functools.lru_cache(maxsize=16)
def _guided_rows(network, options, t0: float, t1: float):
    """sharded_map fn: (params {"net", "labels", "w"}, key, x (c, ...), idx) -> the
    guided solve of each row from t0 to t1 with its label params["labels"][idx]."""

    def fn(params, key, x, idx):
        def one(xi, yi):
            b = guidance.guided_velocity(network, params["net"], yi, params["w"])
            return ode.integrate(b, xi, t0, t1, options=options, batched=False)

        return jax.vmap(one)(x, params["labels"][idx])

    return fn


def guided_solve(network, params, x, labels, w, t0, t1, *, options, chunk_size=None,
                 mesh=None):
    """Rows of x (n, ...) solved from t0 to t1 under the guided field
    v_w(t, x) = v(t, x, null) + w (v(t, x, y_i) - v(t, x, null)) of row i's label
    (`guidance.guided_apply`), split over the mesh's devices; failed rows NaN with
    options.on_failure="nan"."""
    fn = _guided_rows(network, options, float(t0), float(t1))
    p = {"net": params, "labels": np.asarray(labels, np.int32),
         "w": np.asarray(w, np.float32)}
    return distributed.sharded_map(fn, p, x, mesh=mesh, chunk_size=chunk_size)


def inverse_path(model, network, params_list, z, labels=None, w: float = 1.0, *,
                 mesh=None):
    """Yields x after each block's inverse, T_N^{-1}(z), then T_{N-1}^{-1}(.), ...,
    T_1^{-1}(.) (noise at t = 1 of block N, data at t = 0 of block 1), every block
    guided with row i's label labels[i] and weight w when labels are given."""
    x = np.asarray(z)
    for params in reversed(list(params_list)):
        if labels is None:
            x = model.block_map(params, x, inverse=True, mesh=mesh)
        else:
            x = guided_solve(network, params, x, labels, w, 1.0, 0.0, options=model.ode,
                             chunk_size=model.chunk_size, mesh=mesh)
        yield x


def lfm_generate(model, network, params_list, z, labels, w, *, mesh=None):
    """LFM samples from noise z: T_1^{-1} ... T_N^{-1}(z), every block guided with
    row i's label labels[i] and weight w (unguided `model.generate` when labels is
    None)."""
    if labels is None:
        return model.generate(params_list, z, mesh=mesh)
    x = np.asarray(z)
    for x in inverse_path(model, network, params_list, z, labels, w, mesh=mesh):
        pass
    return x


def summary(log_q, samples, dataset, workdir: str, title: str, labels=None) -> dict:
    """Results of an image model: NLL / bpd (`images.bits_per_dim`), failed counts,
    and samples_grid.png (one row per class when labels are given)."""
    nll, nll_se, n_failed = common.finite_nll(log_q)
    common.warn_failed(n_failed, len(log_q), "test points")
    samples = np.asarray(samples)
    bad = lfm.failed_rows(samples)
    common.warn_failed(int(bad.sum()), len(samples), "generated samples")
    dim = int(dataset.dim)
    results = {
        "test_nll": nll, "test_nll_stderr": nll_se,
        "test_bpd": float(images.bits_per_dim(nll, dim)),
        "test_bpd_stderr": float(nll_se / (dim * math.log(2.0))),
        "n_failed": n_failed, "nll_examples": int(len(log_q)),
        "n_samples_failed": int(bad.sum()), "dim": dim, "notes": {"test_bpd": BPD_NOTE},
    }
    shown = np.where(bad[:, None, None, None], 0.0, samples)
    if labels is None:
        nrow, row_labels = 10, None
    else:
        nrow = int(labels.max()) + 1
        row_labels = [f"y={k}" for k in range(nrow)]
    plots.plot_image_grid(os.path.join(workdir, "samples_grid.png"), shown, nrow,
                          title=title.format(**results), row_labels=row_labels)
    return results


def lfm_trajectory(model, params_list, z, workdir: str, *, labels=None, network=None,
                   w: float = 1.0, mesh=None) -> str:
    """trajectory.png: a few images (rows) from noise z (k, H, W, C) after each block's
    inverse T_N^{-1}, ..., T_1^{-1} (columns: noise, then after block N, ..., 1),
    guided per row's label when labels are given."""
    cols = [np.asarray(z), *inverse_path(model, network, params_list, z, labels, w,
                                         mesh=mesh)]
    grid = np.stack(cols, axis=1)  # (k, N + 1, H, W, C): row = one image's path
    grid = np.where(np.isfinite(grid), grid, 0.0)
    path = os.path.join(workdir, "trajectory.png")
    n = model.num_blocks
    plots.plot_image_grid(path, grid.reshape((-1,) + grid.shape[2:]), len(z),
                          title=f"noise, then after the inverse of blocks {n}..1")
    return path


SCORES = ("fd_classifier", "fid_inception")
"""The distances `sample_scorer` may report (lower is better); best_w of the first,
best_w_inception of the second."""


def best_weights(dists: dict) -> dict:
    """The guidance weight of the lowest distance per score: dists {score in SCORES:
    {w: distance}} -> {"best_w": w*, "fd_classifier_best": d(w*)} for fd_classifier and
    {"best_w_inception", "fid_inception_best"} for fid_inception (scores with no
    weights left out; a non-finite distance never wins unless all are)."""
    found = {}
    for m, suffix in zip(SCORES, ("", "_inception")):
        if dists.get(m):
            best = min(dists[m], key=lambda w: dists[m][w] if math.isfinite(dists[m][w])
                       else math.inf)
            found.update({f"best_w{suffix}": best, f"{m}_best": dists[m][best]})
    return found


def sample_scores(results: dict, config, network, generate, key, dataset,
                  workdir: str, *, clock=None) -> dict:
    """Add the sample scores of config.eval (see the module docstring) to results (and
    what they are to results["notes"]); nothing when neither eval.classifier_workdir
    nor eval.inception_weights is set. generate(z (n, H, W, C), labels (n,) or None,
    w) -> samples (n, H, W, C) in [-1, 1] (failed rows NaN: left out of the scores and
    the .npz, counted as fd_n_dropped_w<w>). Returns results."""
    e = config.eval
    if not (e.get("classifier_workdir", "") or e.get("inception_weights", "")):
        return results
    with phases.phase(clock, "sample scores"):
        score = sample_scorer(config, dataset.test, dataset.example_shape)
        n, k = int(e.fd_samples), getattr(network, "num_classes", None)
        z = jax.random.normal(key, (n, *dataset.example_shape))
        labels = None if k is None else np.arange(n, dtype=np.int32) % k
        ws = [None] if k is None else [float(w) for w in e.guidance_ws]
        found = {"fd_samples": n}
        if e.get("classifier_workdir", ""):
            found["classifier_workdir"] = os.path.abspath(e.classifier_workdir)
        if e.get("inception_weights", ""):
            found["inception_weights"] = os.path.abspath(os.path.expanduser(
                e.inception_weights))
        dists, notes = {m: {} for m in SCORES}, {}
        for w in ws:
            tag = "" if w is None else f"_w{w:g}"
            t0 = time.perf_counter()
            samples = np.asarray(generate(z, labels, w))
            found[f"fd_sample_time_s{tag}"] = time.perf_counter() - t0
            if jax.process_index() == 0:
                classifier_eval.save_samples(
                    os.path.join(workdir, f"samples{tag or '_uncond'}.npz"), samples, labels)
            s = score(samples, labels)
            for m in SCORES:
                if m in s:
                    dists[m][w] = found[f"{m}{tag}"] = s[m]
            if "accuracy" in s:
                found[f"accuracy{tag}"] = s["accuracy"]
            found[f"fd_n_dropped{tag}"] = s["n_dropped"]
            notes.update(s["notes"])
            print("  ".join(f"{m}{tag}: {s[m]:.4f}" for m in (*SCORES, "accuracy")
                            if m in s), flush=True)
        if k is not None:
            found.update(best_weights(dists))
    results.update(found)
    results.setdefault("notes", {}).update(notes)
    return results


def save_samples(out_dir: str, name: str, samples, labels=None, *, title: str = "",
                 max_grid: int = 100) -> None:
    """samples_<name>.npz (`classifier_eval.save_samples`: the finite rows as uint8
    "images" and int32 "labels" if given); and samples_<name>.png, a grid of the first
    max_grid images, 10 a row, or with labels one row per class (`class_rows`: up to
    10 images of each class, rows labelled y=<class>; failed rows drawn blank)."""
    x = np.asarray(samples, np.float32)
    classifier_eval.save_samples(os.path.join(out_dir, f"samples_{name}.npz"), x, labels)
    bad = lfm.failed_rows(x)
    shown = np.where(bad.reshape((-1,) + (1,) * (x.ndim - 1)), 0.0, x)
    path = os.path.join(out_dir, f"samples_{name}.png")
    if labels is None:
        shown = shown[:max_grid]
        plots.plot_image_grid(path, shown, max(1, -(-len(shown) // 10)),
                              title=title or None)
        return
    rows, classes = class_rows(labels, per_class=max(1, min(10, max_grid // 10)))
    plots.plot_image_grid(path, shown[rows.reshape(-1)], len(classes), title=title or None,
                          row_labels=[f"y={c}" for c in classes])


def class_rows(labels, per_class: int = 10):
    """(indices (k, m), classes (k,)): the first m = min(per_class, the rarest class's
    count) rows of each of the k classes present in labels (n,), in class order (a
    per-class grid of samples drawn with labels i % num_classes, say)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    m = min([int(per_class)] + [int((labels == c).sum()) for c in classes])
    return np.stack([np.flatnonzero(labels == c)[:m] for c in classes]), classes


def make_scorer(reference, *, classifier_workdir: str = "", inception_weights: str = "",
                example_shape=None):
    """score(samples, labels=None) -> dict: the scores of samples (n, H, W, C), float in
    [-1, 1] or uint8, against reference (m, H, W, C) (e.g. the held-out test images);
    None when both sources are "". Rows of samples with a NaN / inf are left out (and
    of labels (n,)).

    - classifier_workdir: "fd_classifier" and, with labels, "accuracy" of that
      workdir's classifier (`classifier_eval.load` / `score`; ValueError if its
      example shape is not example_shape, when given);
    - inception_weights: "fid_inception", standard FID by pytorch-fid with the local
      Inception weights file (`inception_fid.scorer`: the network is built and the
      reference features are computed once, here).
    Always "n_scored", "n_dropped" and "notes" {score name: what it is}."""
    if not classifier_workdir and not inception_weights:
        return None
    reference = np.asarray(reference)
    clf = classifier_eval.load(classifier_workdir, example_shape) if classifier_workdir \
        else None
    fid_of = None
    if inception_weights:
        from lfm_jax import inception_fid

        fid_of = inception_fid.scorer(reference, inception_weights)

    def score(samples, labels=None):
        samples = np.asarray(samples)
        good = ~lfm.failed_rows(samples)
        x, y = samples[good], None if labels is None else np.asarray(labels)[good]
        if len(x) < 2:
            raise ValueError(f"need at least 2 finite samples to score, got {len(x)}")
        out, notes = {}, {}
        if clf is not None:
            s = classifier_eval.score(*clf, x, reference, labels=y)
            out.update({n: s[n] for n in ("fd_classifier", "accuracy") if n in s})
            notes.update(s["notes"])
        if fid_of is not None:
            out[inception_fid.METRIC] = fid_of(x)
            notes[inception_fid.METRIC] = inception_fid.note(len(x), len(reference))
        out.update(n_scored=int(len(x)), n_dropped=int((~good).sum()), notes=notes)
        return out

    return score


def sample_scorer(config, reference, example_shape=None):
    """`make_scorer` of config.eval.classifier_workdir and config.eval.inception_weights
    (either key may be absent): score(samples, labels=None) -> dict against
    reference, or None when neither is set."""
    e = config.eval
    return make_scorer(reference, classifier_workdir=e.get("classifier_workdir", ""),
                       inception_weights=e.get("inception_weights", ""),
                       example_shape=example_shape)
