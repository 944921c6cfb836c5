"""A small CNN classifier for evaluation without network access, and a Fréchet
distance in its penultimate features.

THIS IS NOT INCEPTION FID. The metric is reported as "fd_classifier" (`METRIC`): the
Fréchet distance between Gaussian fits of the penultimate-layer features of a small
classifier trained in this repository on the same data set. It ranks models on one
data set; its values are not comparable with published FID numbers. Accuracy of the
classifier on class-conditional samples measures how well guidance hits the class.

Classifier: [conv3x3 - ReLU - conv3x3 - ReLU - 2x2 average pool] per width in
`channels`, flatten, Dense(features) - ReLU (the penultimate features), Dense(classes).
`Classifier.logits(params, x)` / `.features(params, x)` take ONE image (H, W, C) in
[-1, 1] (vmap for batches). `train_classifier` fits it with optax Adam on dequantised
uint8 images (`images.preprocess`), a pure jitted step, batches keyed by
fold_in(key, step).

Fréchet distance between N(mu_1, C_1) and N(mu_2, C_2):

    d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2}),

computed on the host in float64 with symmetric eigendecompositions: S = C_1^{1/2}
from eigh(C_1), then tr (S C_2 S)^{1/2} = sum sqrt(max(eig(S C_2 S), 0)). S C_2 S is
symmetric positive semi-definite, so this is exact and stable (no complex parts as
with a general matrix square root of C_1 C_2).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lfm_jax import data as data_lib
from lfm_jax import images as images_lib
from lfm_jax import networks

__all__ = ["METRIC", "DISCLAIMER", "CNN", "Classifier", "make_classifier",
           "make_train_step", "train_classifier", "predict", "accuracy", "features",
           "feature_statistics", "frechet_distance", "fd_classifier"]

METRIC = "fd_classifier"
"""Name under which the classifier Fréchet distance is reported (never "fid")."""

DISCLAIMER = ("fd_classifier: Frechet distance in the penultimate features of a small "
              "classifier trained in this repository; NOT Inception FID, not comparable "
              "with published FID values")


class CNN(nn.Module):
    """Batch (B, H, W, C) -> (features (B, F), logits (B, num_classes))."""

    num_classes: int
    channels: Sequence[int] = (32, 64)
    features: int = 128

    @nn.compact
    def __call__(self, x):
        for ch in self.channels:
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            if x.shape[1] >= 2 and x.shape[2] >= 2:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        f = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
        return f, nn.Dense(self.num_classes)(f)


@dataclasses.dataclass(frozen=True)
class Classifier:
    """init(key) -> params; logits(params, x) -> (num_classes,); features(params, x) ->
    (features,), for ONE image x (H, W, C) in [-1, 1]."""

    init: Callable
    logits: Callable
    features: Callable
    example_shape: tuple
    num_classes: int
    num_params: Callable = networks.count_params


def make_classifier(example_shape, num_classes: int, *, channels=(32, 64),
                    features: int = 128) -> Classifier:
    """A `Classifier` over images of `example_shape` (H, W, C)."""
    example_shape = tuple(int(d) for d in example_shape)
    if len(example_shape) != 3:
        raise ValueError(f"example_shape must be (H, W, C), got {example_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    module = CNN(num_classes=int(num_classes), channels=tuple(int(c) for c in channels),
                 features=int(features))

    def run(params, x):
        if x.shape != example_shape:
            raise ValueError(f"classifier expects one image of shape {example_shape}, got "
                             f"{x.shape}; batch with jax.vmap")
        f, logits = module.apply(params, x[None].astype(jnp.float32))
        return f[0], logits[0]

    return Classifier(init=lambda key: module.init(key, jnp.zeros((1,) + example_shape)),
                      logits=lambda params, x: run(params, x)[1],
                      features=lambda params, x: run(params, x)[0],
                      example_shape=example_shape, num_classes=int(num_classes))


def make_train_step(classifier: Classifier, optimizer: optax.GradientTransformation, *,
                    flip: bool = False) -> Callable:
    """step(params, opt_state, key, k, y) -> (params, opt_state, loss): one Adam step of
    the mean cross-entropy on the uint8 batch k (B, H, W, C), dequantised (and flipped
    if `flip`) with `key`. Pure; jit it."""
    def loss_fn(params, x, y):
        logits = jax.vmap(classifier.logits, in_axes=(None, 0))(params, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def step(params, opt_state, key, k, y):
        x = images_lib.preprocess(key, k, flip=flip)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train_classifier(classifier: Classifier, images, labels, *, key, steps: int,
                     batch_size: int = 128, learning_rate: float = 1e-3,
                     flip: bool = False, log_every: int = 0):
    """Fit the classifier on uint8 images (n, H, W, C) with int labels (n,).

    Batches of `batch_size` rows drawn with replacement by fold_in(key, step); Adam
    with a constant `learning_rate`. Returns the trained params.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32)
    if images.dtype != np.uint8 or images.shape[1:] != classifier.example_shape:
        raise ValueError(f"images must be uint8 (n, {classifier.example_shape}), got "
                         f"{images.dtype} {images.shape}")
    if (labels.shape != images.shape[:1] or labels.min() < 0
            or labels.max() >= classifier.num_classes):
        raise ValueError(f"labels must be {images.shape[0]} ints in [0, "
                         f"{classifier.num_classes}), got shape {labels.shape}")
    optimizer = optax.adam(learning_rate)
    k_init, k_data = jax.random.split(key)
    params = classifier.init(k_init)
    opt_state = optimizer.init(params)
    train_step = make_train_step(classifier, optimizer, flip=flip)

    @jax.jit
    def step_fn(params, opt_state, step, k_all, y_all):
        sk = jax.random.fold_in(k_data, step)
        k, y = data_lib.sample_batch(sk, (k_all, y_all), batch_size)
        return train_step(params, opt_state, jax.random.fold_in(sk, 1), k, y)

    k_all, y_all = jnp.asarray(images), jnp.asarray(labels)
    for step in range(int(steps)):
        params, opt_state, loss = step_fn(params, opt_state, step, k_all, y_all)
        if log_every and (step + 1) % log_every == 0:
            print(f"classifier step {step + 1}: loss {float(loss):.4f}")
    return params


def _batched(fn, params, x, batch_size):
    f = jax.jit(jax.vmap(fn, in_axes=(None, 0)))
    x = np.asarray(x)
    return np.concatenate([np.asarray(f(params, x[i:i + batch_size]))
                           for i in range(0, x.shape[0], batch_size)])


def predict(classifier: Classifier, params, x, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes (n,) of float images x (n, H, W, C) in [-1, 1]."""
    return _batched(lambda p, xi: jnp.argmax(classifier.logits(p, xi)), params, x, batch_size)


def accuracy(classifier: Classifier, params, x, labels, batch_size: int = 1000) -> float:
    """Fraction of x (n, H, W, C) in [-1, 1] classified as `labels` (n,)."""
    return float(np.mean(predict(classifier, params, x, batch_size) == np.asarray(labels)))


def features(classifier: Classifier, params, x, batch_size: int = 1000) -> np.ndarray:
    """Penultimate features (n, F) of float images x (n, H, W, C) in [-1, 1]."""
    return _batched(classifier.features, params, x, batch_size)


def feature_statistics(f) -> tuple:
    """Mean (F,) and unbiased covariance (F, F) of features f (n, F), float64."""
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (n >= 2, F), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(c):
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) in float64 (host)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: means {mu1.shape}, {mu2.shape}; covariances "
                         f"{cov1.shape}, {cov2.shape}")
    s = _psd_sqrt((cov1 + cov1.T) / 2)
    m = s @ ((cov2 + cov2.T) / 2) @ s
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)))
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)
    return max(d, 0.0)


def fd_classifier(classifier: Classifier, params, x_a, x_b, batch_size: int = 1000) -> dict:
    """{"fd_classifier": d, "note": DISCLAIMER} between float image sets x_a, x_b
    (n, H, W, C) in [-1, 1] (e.g. generated samples and held-out data). NOT Inception FID."""
    stats = [feature_statistics(features(classifier, params, x, batch_size)) for x in (x_a, x_b)]
    return {METRIC: frechet_distance(*stats[0], *stats[1]), "note": DISCLAIMER}
