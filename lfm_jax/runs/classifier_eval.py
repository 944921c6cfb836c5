"""Scoring generated images with the repository's own classifier (issue 11: evaluation
without network access). NOT Inception FID: see `classifier.DISCLAIMER`.

A classifier workdir (written by the "classifier" job, configs/classifier_digits.py)
holds `classifier.json` (architecture, example shape, number of classes, and the data
settings it was trained with) and `classifier_params/` (orbax, the trained params).

Every image set is scored at 8-bit bin centres: float images (n, H, W, C) are
quantised (`images.quantize`) and mapped to x = 2 (k + 1/2) / 256 - 1
(`images.to_centered`), uint8 images only mapped. So a job's in-memory samples, the
uint8 samples_w*.npz it saved, and the held-out test images (dequantised floats) are
all scored the same way, and experiments/score_samples.py reproduces a job's numbers.
Rows with a non-finite value (failed ODE solves) are left out and counted.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from lfm_jax import checkpoint, images, lfm
from lfm_jax import classifier as clf

SPEC_FILE = "classifier.json"
PARAMS_DIR = "classifier_params"
DATA_KEYS = ("name", "source_split", "n_val", "n_test")
"""config.data keys (with config.seed) that fix the held-out split; a generator scored
with a classifier must share them, so its test images were never trained on."""


def train_command(workdir: str, data_name: str = "digits") -> str:
    """The command that trains the classifier of `workdir` on `data_name`."""
    if data_name == "mnist":
        return (f"python -m experiments.train --config configs/classifier_digits.py:mnist "
                f"--config.data.path=<mnist folder> --workdir {workdir}")
    return f"python -m experiments.train --config configs/classifier_digits.py --workdir {workdir}"


def missing(workdir: str, data_name: str = "digits"):
    """None when `workdir` holds a trained classifier; else a message naming the
    missing file and the command that trains it."""
    for name in (SPEC_FILE, PARAMS_DIR):
        path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), name)
        if not os.path.exists(path):
            return (f"no trained classifier in {workdir}: {path} is missing. Train it "
                    f"first (same data settings and seed as the generator): "
                    f"{train_command(workdir, data_name)}")
    return None


def read_spec(workdir: str) -> dict:
    """The contents of `<workdir>/classifier.json` (FileNotFoundError via `missing`)."""
    message = missing(workdir)
    if message:
        raise FileNotFoundError(message)
    with open(os.path.join(workdir, SPEC_FILE)) as f:
        return json.load(f)


def split_mismatch(spec: dict, config) -> dict:
    """{key: (classifier's, config's)} of the data-split settings (`DATA_KEYS`, seed)
    that differ between a classifier spec and a generator config."""
    mine = {f"data.{k}": config["data"].get(k) for k in DATA_KEYS}
    mine["seed"] = config["seed"]
    theirs = {f"data.{k}": spec["data"].get(k) for k in DATA_KEYS}
    theirs["seed"] = spec["data"].get("seed")
    return {k: (theirs[k], v) for k, v in mine.items() if theirs[k] != v}


def load(workdir: str, example_shape=None):
    """(classifier, params) of a classifier workdir.

    Raises FileNotFoundError naming the missing file and the training command, and
    ValueError when `example_shape` (H, W, C) is given and differs from the
    classifier's."""
    spec = read_spec(workdir)
    shape = tuple(spec["example_shape"])
    if example_shape is not None and tuple(example_shape) != shape:
        raise ValueError(f"the classifier in {workdir} takes images of shape {shape}, "
                         f"not {tuple(example_shape)}")
    model = clf.make_classifier(shape, spec["num_classes"], channels=spec["channels"],
                                features=spec["features"])
    target = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), PARAMS_DIR)
    with checkpoint.Checkpointer(directory, keep=1, async_save=False) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{directory} holds no saved params; "
                                    f"{train_command(workdir, spec['data'].get('name'))}")
        params = ckpt.restore(target)
    return model, params


def as_scored(x) -> np.ndarray:
    """The finite rows of x (n, H, W, C) at 8-bit bin centres, float32: uint8 images
    mapped (`images.to_centered`), float images in [-1, 1] quantised first."""
    x = np.asarray(x)
    k = x if x.dtype == np.uint8 else images.quantize(x[~lfm.failed_rows(x)])
    return np.asarray(images.to_centered(k))


def score(classifier, params, samples, reference, labels=None) -> dict:
    """{"fd_classifier": Frechet distance in the classifier's penultimate features
    between samples and reference (both (n, H, W, C), uint8 or float in [-1, 1], e.g.
    generated images and held-out test images), "accuracy": fraction of samples
    classified as their `labels` (n,) (only when labels are given), "n_scored",
    "n_dropped" (non-finite rows, left out), "notes": {"fd_classifier": DISCLAIMER}}."""
    keep = ~lfm.failed_rows(samples)
    x = as_scored(samples)
    if len(x) < 2:
        raise ValueError(f"need at least 2 finite samples to score, got {len(x)}")
    out = {clf.METRIC: clf.fd_classifier(classifier, params, x,
                                         as_scored(reference))[clf.METRIC]}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != keep.shape:
            raise ValueError(f"labels must be ({len(keep)},), got {labels.shape}")
        out["accuracy"] = clf.accuracy(classifier, params, x, labels[keep])
    out.update(n_scored=int(len(x)), n_dropped=int((~keep).sum()),
               notes={clf.METRIC: clf.DISCLAIMER})
    return out


def save_samples(path: str, samples, labels=None) -> int:
    """Write the finite rows of float samples (n, H, W, C) in [-1, 1] as uint8
    "images" (and their int32 "labels") to an .npz, atomically; returns the number of
    rows written."""
    from lfm_jax.runs import common

    s = np.asarray(samples)
    good = ~lfm.failed_rows(s)
    arrays = {"images": np.asarray(images.quantize(s[good]))}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int32)[good]
    with common.atomic_open(path) as f:
        np.savez(f, **arrays)
    return int(good.sum())


def load_samples(path: str):
    """(uint8 images (n, H, W, C), labels (n,) or None) of a saved samples .npz."""
    with np.load(path) as z:
        return z["images"], (z["labels"] if "labels" in z.files else None)
