"""Images in the jobs (SPEC section 6): the data set, its device-side batches, the
class-conditional loss pieces and the model of config.model.kind.

`load(config)` reads config.data.name in {"digits", "mnist", "cifar10"}
(`images.LOADERS`; mnist / cifar10 from config.data.path, a clear error naming the
missing file) and splits it (config.data.n_val / n_test held out, seeded) into an
`ImageData`: a `data.Dataset`-like object whose train / val / test are float32
images (n, H, W, C) in [-1, 1], dequantised ONCE with a seeded noise draw (the LFM
blocks push these, and the test NLL scores them), plus the uint8 training images and
every split's int32 labels.

Plain flow matching dequantises afresh every step instead: `sample_batch` draws rows of
the uint8 training set ({"x": uint8, "y": labels}, replicated on the devices; the data
sets here are small) and dequantises them with the step's key, optionally with random
horizontal flips (config.data.random_flip), giving the batch {"x": float, "y": int}.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import guidance, images

IMAGE_DATA = tuple(images.LOADERS)
"""config.data.name values that are image data sets."""


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Image splits for the jobs; duck-types `data.Dataset` (log_prob, sampler and
    entropy are None: the density of images is unknown).

    train, val, test: float32 (n, H, W, C) in [-1, 1], dequantised once (seeded);
    train_uint8: the training images before dequantisation; *_labels: int32 (n,).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_uint8: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    name: str = "images"
    log_prob: Optional[Callable] = None
    entropy: Optional[float] = None
    sampler: Optional[Callable] = None

    @property
    def dim(self) -> int:
        return math.prod(self.train.shape[1:])

    @property
    def example_shape(self) -> tuple:
        return tuple(self.train.shape[1:])


def is_image_data(config) -> bool:
    """Whether config.data.name is an image data set (`IMAGE_DATA`)."""
    return config.data.name in IMAGE_DATA


def load(config) -> ImageData:
    """The image data set of config.data (name, path, source_split, n_val, n_test)."""
    d = config.data
    if d.name != "digits" and not d.path:
        raise ValueError(f"config.data.name={d.name!r} needs config.data.path (the "
                         f"folder holding its files)")
    split = "all" if d.name == "digits" else d.get("source_split", "train")
    k, y = images.LOADERS[d.name](d.path or None, split)
    ds = images.split_images(k, y, int(d.n_val), int(d.n_test), seed=config.seed,
                             name=d.name)
    key = jax.random.PRNGKey(config.seed)
    deq = [np.asarray(images.dequantize(jax.random.fold_in(key, i), a))
           for i, a in enumerate((ds.train, ds.val, ds.test))]
    return ImageData(*deq, train_uint8=ds.train, train_labels=ds.train_labels,
                     val_labels=ds.val_labels, test_labels=ds.test_labels,
                     num_classes=ds.num_classes, name=d.name)


def train_data(dataset: ImageData) -> dict:
    """The replicated training data of plain FM: {"x": uint8 images, "y": labels}."""
    return {"x": dataset.train_uint8, "y": dataset.train_labels}


def prepare_batch(flip: bool = False) -> Callable:
    """(key, {"x": uint8 (B, H, W, C), "y": (B,)}) -> {"x": float32 dequantised (and
    optionally flipped), "y"}: new dequantisation noise every call
    (`images.preprocess`); the on-device half of host-fed image batches."""

    def prepare(key, batch):
        x = images.preprocess(key, batch["x"], dequantise=True, flip=flip)
        return {"x": x, "y": batch["y"]}

    return prepare


def sample_batch(batch_size: int, flip: bool = False) -> Callable:
    """(key, {"x": uint8 (n, H, W, C), "y": (n,)}) -> {"x": float32 dequantised (and
    optionally flipped) (B, H, W, C), "y": (B,)}: rows with replacement, then
    `prepare_batch`."""
    prepare = prepare_batch(flip)

    def sample(key, data):
        k_rows, k_pre = jax.random.split(key)
        return prepare(k_pre, data_lib.sample_batch(k_rows, data, batch_size))

    return sample


def val_batch(dataset: ImageData, n: int = 2_000) -> dict:
    """{"x", "y"} of the first n validation images (keep-best scoring)."""
    return {"x": np.asarray(dataset.val[:n]), "y": np.asarray(dataset.val_labels[:n])}


def label_dropout(p_uncond: float, null_label: int) -> Callable:
    """The labels of a class-conditional loss: (key, batch) -> batch["y"] with each
    label replaced by the null class with probability p_uncond (classifier-free
    guidance training, `guidance.drop_labels`)."""

    def labels(key, batch):
        return guidance.drop_labels(key, batch["y"], p_uncond, null_label)

    return labels


def loss_labels(config, network) -> Optional[Callable]:
    """`label_dropout` for a class-conditional network (config.fm.p_uncond), else None
    (the unconditional loss)."""
    if getattr(network, "num_classes", None) is None:
        return None
    return label_dropout(float(config.fm.p_uncond), network.null_label)


def check_classes(config, dataset) -> None:
    """config.model.num_classes must be 0 or cover the data's labels."""
    k = int(config.model.get("num_classes", 0))
    if k and isinstance(dataset, ImageData) and k < dataset.num_classes:
        raise ValueError(f"config.model.num_classes={k} but {dataset.name} has "
                         f"{dataset.num_classes} classes")
    if k and not isinstance(dataset, ImageData):
        raise ValueError("config.model.num_classes > 0 needs a labelled data set "
                         f"({', '.join(IMAGE_DATA)}); {config.data.name!r} has no labels")
