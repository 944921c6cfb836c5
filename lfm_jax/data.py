"""Data: validation, 2-D toy samplers, Gaussian mixtures, datasets and batches.

Every array of examples is a 2-D array of shape (n, dim). Samplers take an explicit
`jax.random` key and return float32 jax arrays; `Dataset` holds numpy arrays (host
memory), and the trainer draws batches by index with `sample_batch`, keyed by
`jax.random.fold_in(base_key, step)` so that a resumed run sees the same batches.

Densities that are known exactly (checkerboard, eight Gaussians, Gaussian mixtures,
and the official LFM image densities "rose" and "tree")
come with a per-example, jax-traceable `log_prob(x)`, x of shape (dim,), so that the
entropy H(p) = -E_p log p(X) (the floor of the test NLL) can be computed.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lfm_jax import distributed

__all__ = [
    "validate",
    "CHECKERBOARD_SCALE",
    "checkerboard_entropy",
    "log_density_checkerboard",
    "sample_checkerboard",
    "sample_eight_gaussians",
    "sample_moons",
    "sample_rings",
    "sample_spirals",
    "IMAGE_EXTENT",
    "PixelMixture",
    "image_density",
    "load_grayscale",
    "official_image_density",
    "sample_rose",
    "sample_tree",
    "TOY_2D",
    "sample_toy",
    "GaussianMixture",
    "make_gaussian_mixture",
    "eight_gaussians_mixture",
    "Dataset",
    "make_dataset",
    "load_array",
    "load_npy",
    "read_csv",
    "sample_batch",
    "fresh_sample_batch",
]


# --------------------------------------------------------------------------- validate


def validate(x, dim: Optional[int] = None, name: str = "data") -> np.ndarray:
    """Check that `x` is a finite, non-empty (n, dim) array and return it as numpy.

    Call it on RAW data, before any transformation (a NaN spreads through a
    normalisation to every row), with `name` the file it came from.

    Args:
        x: numpy or jax array, expected shape (n, dim), numeric.
        dim: expected number of columns, or None to accept any.
        name: what the array is (a file path), used in error messages.

    Returns:
        numpy array of shape (n, dim): float64 if the input is float64, else float32.

    Raises:
        ValueError: wrong rank, empty, wrong dimension, non-numeric, or NaN / Inf
            entries (the message gives the first bad row and column (0-based), its
            value, and the number of bad rows).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D array (n, dim), got shape {arr.shape} "
            f"(rank {arr.ndim})"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: array is empty, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name}: wrong number of columns, expected dim {dim}, got {arr.shape[1]} "
            f"(shape {arr.shape})"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    arr = arr.astype(dtype, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        row = int(bad_rows[0])
        col = int(np.flatnonzero(~finite[row])[0])
        raise ValueError(
            f"{name}: row {row}, column {col} is {arr[row, col]} (rows and columns "
            f"counted from 0); NaN or Inf in {bad_rows.size} of {arr.shape[0]} rows"
        )
    return arr


def load_npy(path, dim: Optional[int] = None) -> np.ndarray:
    """Read a .npy file (no pickles) and `validate` it, naming the file on any error
    (junk bytes, an empty or truncated file, a wrong shape, NaN / Inf)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({path.stat().st_size} bytes): "
                         f"{e}") from e
    return validate(arr, dim, name=str(path))


# ------------------------------------------------------------------ 2-D toy samplers

CHECKERBOARD_SCALE = 1.0 / 0.45
"""Default checkerboard scale s: the base [-2, 2]^2 board is divided by 0.45.

FFJORD / torchcfm use s = 2 (support [-4, 4]^2, entropy log 32 = 3.466 nats); here the
default follows the "/0.45" convention, support [-2/0.45, 2/0.45]^2, entropy
log 8 - 2 log 0.45 = 3.676 nats. Pass `scale=2.0` to reproduce FFJORD exactly.
"""


def checkerboard_entropy(scale: float = CHECKERBOARD_SCALE) -> float:
    """Entropy in nats of the checkerboard: H = log(8 s^2) = log 8 + 2 log s."""
    return math.log(8.0) + 2.0 * math.log(scale)


def log_density_checkerboard(x: jax.Array, scale: float = CHECKERBOARD_SCALE) -> jax.Array:
    """Exact log-density of the checkerboard at x, shape (..., 2) -> (...).

    With u = x / s, the density is uniform on the 8 filled unit squares of [-2, 2)^2,
    those with floor(u1) + floor(u2) even: p(x) = 1 / (8 s^2) there, 0 elsewhere.
    Returns -log(8 s^2) inside the support and -inf outside.
    """
    u = jnp.asarray(x) / scale
    inside = jnp.all((u >= -2.0) & (u < 2.0), axis=-1)
    filled = jnp.mod(jnp.floor(u[..., 0]) + jnp.floor(u[..., 1]), 2.0) == 0.0
    log_p = -math.log(8.0 * scale**2)
    return jnp.where(inside & filled, log_p, -jnp.inf).astype(u.dtype)


@partial(jax.jit, static_argnames=("n",))
def sample_checkerboard(key: jax.Array, n: int, scale: float = CHECKERBOARD_SCALE) -> jax.Array:
    """Checkerboard samples, shape (n, 2) float32 (the FFJORD construction).

    x1 ~ U[-2, 2), x2 = U[0, 1) - 2 * randint{0, 1} + (floor(x1) mod 2), then
    x = s * (x1, x2). Uniform on 8 squares of side s; see `log_density_checkerboard`.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,)) * 4.0 - 2.0
    x2 = jax.random.uniform(k2, (n,)) - 2.0 * jax.random.randint(k3, (n,), 0, 2)
    x2 = x2 + jnp.mod(jnp.floor(x1), 2.0)
    return (jnp.stack([x1, x2], axis=-1) * scale).astype(jnp.float32)


@partial(jax.jit, static_argnames=("n",))
def sample_moons(key: jax.Array, n: int, noise: float = 0.1) -> jax.Array:
    """Two interleaving half circles (sklearn `make_moons`, FFJORD scaling), (n, 2).

    Each point picks a moon with probability 1/2 and an angle a ~ U[0, pi]:
    outer (cos a, sin a), inner (1 - cos a, 0.5 - sin a); add N(0, noise^2 I), then
    x -> 2 x + (-1, -0.2).
    """
    ka, km, kz = jax.random.split(key, 3)
    a = jax.random.uniform(ka, (n,)) * jnp.pi
    inner = jax.random.bernoulli(km, 0.5, (n,))
    x = jnp.where(inner, 1.0 - jnp.cos(a), jnp.cos(a))
    y = jnp.where(inner, 0.5 - jnp.sin(a), jnp.sin(a))
    pts = jnp.stack([x, y], axis=-1) + noise * jax.random.normal(kz, (n, 2))
    return (2.0 * pts + jnp.array([[-1.0, -0.2]])).astype(jnp.float32)


@partial(jax.jit, static_argnames=("n",))
def sample_rings(key: jax.Array, n: int, noise: float = 0.08) -> jax.Array:
    """Four concentric circles of radii 3, 2.25, 1.5, 0.75 (FFJORD "rings"), (n, 2).

    Ring and angle a ~ U[0, 2 pi) uniform; point r (cos a, sin a) + N(0, noise^2 I).
    """
    kr, ka, kz = jax.random.split(key, 3)
    radii = jnp.array([3.0, 2.25, 1.5, 0.75])
    r = radii[jax.random.randint(kr, (n,), 0, 4)]
    a = jax.random.uniform(ka, (n,)) * 2.0 * jnp.pi
    pts = jnp.stack([r * jnp.cos(a), r * jnp.sin(a)], axis=-1)
    return (pts + noise * jax.random.normal(kz, (n, 2))).astype(jnp.float32)


@partial(jax.jit, static_argnames=("n",))
def sample_spirals(key: jax.Array, n: int, noise: float = 0.1) -> jax.Array:
    """Two interleaved spirals (FFJORD "2spirals"), shape (n, 2).

    r = sqrt(U) * 3 pi, d = (-r cos r + U'/2, r sin r + U''/2), arm sign +-1 with
    probability 1/2, x = sign * d / 3 + N(0, noise^2 I).
    """
    kr, ku, ks, kz = jax.random.split(key, 4)
    r = jnp.sqrt(jax.random.uniform(kr, (n,))) * 540.0 * (2.0 * jnp.pi) / 360.0
    u = jax.random.uniform(ku, (n, 2)) * 0.5
    d = jnp.stack([-jnp.cos(r) * r, jnp.sin(r) * r], axis=-1) + u
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, (n, 1)), 1.0, -1.0)
    pts = sign * d / 3.0 + noise * jax.random.normal(kz, (n, 2))
    return pts.astype(jnp.float32)


# ------------------------------------------------------------------ Gaussian mixtures


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, diag(sigma_k^2)), x in R^D.

    Attributes:
        means: (K, D) component means mu_k.
        stds: (K,) isotropic or (K, D) diagonal standard deviations sigma_k.
        weights: (K,) non-negative mixture weights (normalised when used).
    """

    means: jax.Array
    stds: jax.Array
    weights: jax.Array

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def _stds_kd(self) -> jax.Array:
        stds = jnp.asarray(self.stds)
        if stds.ndim == 1:
            stds = jnp.broadcast_to(stds[:, None], self.means.shape)
        return stds

    def _log_weights(self) -> jax.Array:
        log_w = jnp.log(jnp.asarray(self.weights))
        return log_w - jax.scipy.special.logsumexp(log_w)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n samples, shape (n, D): k ~ Cat(w), x = mu_k + sigma_k * z, z ~ N(0, I)."""
        return _sample_mixture(key, jnp.asarray(self.means), self._stds_kd(),
                               self._log_weights(), n)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Exact log p(x) for one example x of shape (D,), returns a scalar.

        log p(x) = logsumexp_k [ log w_k - |(x - mu_k) / sigma_k|^2 / 2
                                 - sum_d log sigma_kd - D log(2 pi) / 2 ].
        """
        stds = self._stds_kd()
        diff = (x[None, :] - jnp.asarray(self.means)) / stds
        log_norm = -jnp.sum(jnp.log(stds), axis=-1) - 0.5 * self.dim * math.log(2.0 * math.pi)
        log_comp = -0.5 * jnp.sum(diff * diff, axis=-1) + log_norm
        return jax.scipy.special.logsumexp(log_comp + self._log_weights())

    def entropy_mc(self, key: jax.Array, n: int = 100_000, batch_size: int = 8192):
        """Monte-Carlo entropy H = -E_p log p(X) with its standard error.

        Returns (H_hat, stderr) as jax scalars: H_hat = -mean log p(x_i), x_i ~ p,
        stderr = std(log p(x_i)) / sqrt(n). This is the floor of any model's NLL.
        """
        x = self.sample(key, n)
        log_p = distributed.map_in_chunks(jax.vmap(self.log_prob), x, batch_size)
        return -jnp.mean(log_p), jnp.std(log_p, ddof=1) / math.sqrt(n)


@partial(jax.jit, static_argnames=("n",))
def _sample_mixture(key, means, stds, log_weights, n):
    """x = means[k] + stds[k] * z, k ~ Cat(exp(log_weights)); means, stds (K, D)."""
    kc, kz = jax.random.split(key)
    comp = jax.random.categorical(kc, log_weights, shape=(n,))
    z = jax.random.normal(kz, (n, means.shape[1]), dtype=means.dtype)
    return means[comp] + stds[comp] * z


def _as_key(key_or_seed) -> jax.Array:
    if isinstance(key_or_seed, (int, np.integer)):
        return jax.random.PRNGKey(int(key_or_seed))
    return key_or_seed


def make_gaussian_mixture(
    key_or_seed,
    dim: int,
    n_components: int,
    mean_scale: float = 1.0,
    std_range: tuple = (0.3, 0.6),
    diagonal: bool = False,
) -> GaussianMixture:
    """A reproducible random Gaussian mixture in any dimension.

    mu_k ~ N(0, mean_scale^2 I_D); sigma_k ~ U[std_range] (one per component, or one
    per coordinate if `diagonal`); w_k ∝ U[0.5, 1.5] (no vanishing components).
    The same seed and arguments always give the same mixture (float32 arrays).
    """
    std_shape = (n_components, dim) if diagonal else (n_components,)
    means, stds, weights = _random_mixture_params(
        _as_key(key_or_seed), (n_components, dim), std_shape, mean_scale,
        float(std_range[0]), float(std_range[1]))
    return GaussianMixture(means=means, stds=stds, weights=weights)


@partial(jax.jit, static_argnames=("mean_shape", "std_shape"))
def _random_mixture_params(key, mean_shape, std_shape, mean_scale, std_lo, std_hi):
    km, ks, kw = jax.random.split(key, 3)
    means = mean_scale * jax.random.normal(km, mean_shape)
    stds = jax.random.uniform(ks, std_shape, minval=std_lo, maxval=std_hi)
    weights = jax.random.uniform(kw, mean_shape[:1], minval=0.5, maxval=1.5)
    return means, stds, weights / jnp.sum(weights)


def eight_gaussians_mixture() -> GaussianMixture:
    """FFJORD's "8gaussians": centres 4 (cos(k pi/4), sin(k pi/4)) / 1.414, std 0.5 / 1.414."""
    angles = jnp.arange(8) * (jnp.pi / 4.0)
    means = 4.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1) / 1.414
    return GaussianMixture(means=means, stds=jnp.full((8,), 0.5 / 1.414),
                           weights=jnp.full((8,), 1.0 / 8.0))


def sample_eight_gaussians(key: jax.Array, n: int) -> jax.Array:
    """Samples of `eight_gaussians_mixture()`, shape (n, 2) float32."""
    return eight_gaussians_mixture().sample(key, n).astype(jnp.float32)


# ------------------------------------------------------------ image densities (2-D)

IMAGE_EXTENT = 4.0
"""Half-width of the square [-4, 4]^2 an image density is drawn on (FFJORD, official LFM)."""

ASSETS = Path(__file__).resolve().parent / "assets"
"""Folder of the images of the official 2-D data sets (`rose.png`, `tree.png`)."""


@dataclass(frozen=True)
class PixelMixture(GaussianMixture):
    """A `GaussianMixture` with one component per pixel (thousands of components).

    Same density and `log_prob` as `GaussianMixture`; `sample` draws the component by
    inverse CDF (searchsorted on the cumulative weights, O(n log K) time and O(n + K)
    memory) instead of `jax.random.categorical`'s (n, K) Gumbel array.
    """

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n samples, shape (n, 2): k ~ Cat(w) by inverse CDF, x = mu_k + sigma_k * z."""
        return _sample_pixels(key, jnp.asarray(self.means), self._stds_kd(),
                              jnp.cumsum(jnp.asarray(self.weights)), n)


@partial(jax.jit, static_argnames=("n",))
def _sample_pixels(key, means, stds, cdf, n):
    ku, kz = jax.random.split(key)
    u = jax.random.uniform(ku, (n,), dtype=cdf.dtype) * cdf[-1]
    comp = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)
    z = jax.random.normal(kz, (n, means.shape[1]), dtype=means.dtype)
    return means[comp] + stds[comp] * z


def image_density(gray, extent: float = IMAGE_EXTENT) -> PixelMixture:
    """The density of a grayscale image (dark = mass), FFJORD's construction.

    gray: (h, w) array in reading orientation (row 0 is the top of the picture).
    Pixel (r, c) is a Gaussian component with centre
    (x_c, y_r) = (-e + 2 e c / (w - 1), e - 2 e r / (h - 1)), e = extent, per-axis
    standard deviations (e / w, e / h) (half of 2e / w and 2e / h), and weight
    proportional to max(gray) - gray[r, c]; pixels of weight 0 are dropped. The
    picture is stretched to the square [-e, e]^2 whatever its aspect ratio.

    This is the official LFM generator (main_2d.py, `inf_train_gen`): it flips the image
    upside down (PIL rotate(180) then FLIP_LEFT_RIGHT) and puts row i at
    y = linspace(-4, 4, h)[i], which is the same as y_r above.
    """
    gray = np.asarray(gray, np.float64)
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"image_density: expected a 2-D grayscale image (h, w) with "
                         f"h, w >= 2, got shape {gray.shape}")
    weight = gray.max() - gray
    if not np.all(np.isfinite(weight)) or weight.sum() <= 0:
        raise ValueError("image_density: the image has no dark pixel (all pixels equal) "
                         "or non-finite values")
    h, w = gray.shape
    ys = extent - 2.0 * extent * np.arange(h) / (h - 1)
    xs = -extent + 2.0 * extent * np.arange(w) / (w - 1)
    rows, cols = np.nonzero(weight > 0)
    means = np.stack([xs[cols], ys[rows]], axis=1)
    stds = np.broadcast_to(np.array([extent / w, extent / h]), means.shape)
    weights = weight[rows, cols] / weight.sum()
    return PixelMixture(means=jnp.asarray(means, jnp.float32),
                        stds=jnp.asarray(stds, jnp.float32),
                        weights=jnp.asarray(weights, jnp.float32))


def load_grayscale(path) -> np.ndarray:
    """An image file as an (h, w) uint8 array, PIL's "L" conversion (row 0 = top)."""
    from PIL import Image  # pillow is a dependency of matplotlib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


@lru_cache(maxsize=None)
def official_image_density(name: str) -> PixelMixture:
    """The density of the official 2-D data set `name` ("rose" or "tree")."""
    if name not in ("rose", "tree"):
        raise ValueError(f"no official image data set {name!r}; known: rose, tree")
    return image_density(load_grayscale(ASSETS / f"{name}.png"))


def sample_rose(key: jax.Array, n: int) -> jax.Array:
    """Samples of the official "rose" density (`image_density` of assets/rose.png), (n, 2)."""
    return official_image_density("rose").sample(key, n).astype(jnp.float32)


def sample_tree(key: jax.Array, n: int) -> jax.Array:
    """Samples of the official "tree" density (`image_density` of assets/tree.png), (n, 2)."""
    return official_image_density("tree").sample(key, n).astype(jnp.float32)


TOY_2D: dict[str, Callable] = {
    "checkerboard": sample_checkerboard,
    "eight_gaussians": sample_eight_gaussians,
    "moons": sample_moons,
    "rings": sample_rings,
    "spirals": sample_spirals,
    "rose": sample_rose,
    "tree": sample_tree,
}
"""Registry of 2-D toy samplers, each `sampler(key, n, **kw) -> (n, 2) float32`."""


def _toy_log_density(name: str, **kw) -> Optional[Callable]:
    """Exact per-example log-density of a toy where known, else None."""
    if name == "checkerboard":
        scale = kw.get("scale", CHECKERBOARD_SCALE)
        return lambda x: log_density_checkerboard(x, scale)
    if name == "eight_gaussians":
        return eight_gaussians_mixture().log_prob
    if name in ("rose", "tree"):
        return official_image_density(name).log_prob
    return None


def sample_toy(name: str, key: jax.Array, n: int, **kw) -> jax.Array:
    """Draw n samples, shape (n, 2), from the toy distribution `name` in `TOY_2D`."""
    if name not in TOY_2D:
        raise ValueError(f"unknown toy data set {name!r}; known: {sorted(TOY_2D)}")
    return TOY_2D[name](key, n, **kw)


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits of one distribution.

    Attributes:
        train, val, test: numpy arrays of shape (n_split, dim).
        dim: data dimension D.
        log_prob: exact per-example log-density x (D,) -> scalar, jax-traceable, or
            None when the density is unknown.
        name: data set name.
        entropy: closed-form entropy in nats where known (else None).
        sampler: (key, n) -> (n, D) float32 fresh draws from the same distribution,
            jax-traceable, where it is known (toys, "gmm"), else None; training can
            then draw a new batch every step instead of indexing `train`
            (`fresh_sample_batch`, config key data.fresh_samples).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dim: int
    log_prob: Optional[Callable] = None
    name: str = "data"
    entropy: Optional[float] = None
    sampler: Optional[Callable] = None


def make_dataset(
    name: str,
    n_train: int,
    n_val: int = 10_000,
    n_test: int = 10_000,
    seed: int = 0,
    **kw,
) -> Dataset:
    """Build a `Dataset` for a toy name in `TOY_2D` or for "gmm".

    Keys: base = PRNGKey(seed); the distribution (for "gmm") uses fold_in(base, 0) and
    the train / val / test splits fold_in(base, 1 / 2 / 3), so the splits are
    independent and each is reproducible on its own.

    Args:
        name: a `TOY_2D` name (kw go to its sampler, e.g. scale for "checkerboard")
            or "gmm" (kw: dim, n_components, and `make_gaussian_mixture` options).
        n_train, n_val, n_test: split sizes.
        seed: integer seed.
    """
    base = jax.random.PRNGKey(seed)
    keys = [jax.random.fold_in(base, i) for i in range(4)]
    sizes = (n_train, n_val, n_test)
    entropy = None
    if name == "gmm":
        dim = kw.pop("dim", 2)
        n_components = kw.pop("n_components", 8)
        mixture = make_gaussian_mixture(keys[0], dim, n_components, **kw)
        splits = [mixture.sample(k, m) for k, m in zip(keys[1:], sizes)]
        log_prob = mixture.log_prob
        sampler = mixture.sample
        name = f"gmm{dim}d"
    elif name in TOY_2D:
        dim = 2
        splits = [sample_toy(name, k, m, **kw) for k, m in zip(keys[1:], sizes)]
        log_prob = _toy_log_density(name, **kw)
        sampler = partial(TOY_2D[name], **kw)
        if name == "checkerboard":
            entropy = checkerboard_entropy(kw.get("scale", CHECKERBOARD_SCALE))
    else:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(TOY_2D) + ['gmm']}")
    train, val, test = (
        validate(s, dim, f"{name}/{split}") for s, split in zip(splits, ("train", "val", "test"))
    )
    return Dataset(train=train, val=val, test=test, dim=dim, log_prob=log_prob,
                   name=name, entropy=entropy, sampler=sampler)


def load_array(path, dim: Optional[int] = None, key: Optional[str] = None) -> np.ndarray:
    """Load an (n, dim) array from a .npy, .npz or .csv file and validate it.

    For .npz the array is `key` if given, else the only array, else the first of
    "x", "data", "arr_0" present. A .csv may have one non-numeric header line.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unknown extension, missing .npz key, or invalid content (see
            `validate`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path} (expected a .npy, .npz or .csv file holding "
            f"an (n, dim) array)"
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_npy(path, dim)
    if suffix == ".npz":
        try:
            f = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise ValueError(f"{path}: not a readable .npz file: {e}") from e
        with f:
            names = list(f.keys())
            if key is None:
                candidates = names if len(names) == 1 else [
                    k for k in ("x", "data", "arr_0") if k in names]
                if not candidates:
                    raise ValueError(f"{path}: pass key=...; arrays in file: {names}")
                key = candidates[0]
            if key not in names:
                raise ValueError(f"{path}: no array {key!r}; arrays in file: {names}")
            try:
                arr = f[key]
            except (ValueError, EOFError, OSError) as e:
                raise ValueError(f"{path}: array {key!r} is damaged: {e}") from e
    elif suffix == ".csv":
        arr, header = read_csv(path)
        return validate(arr, dim, name=f"{path} (rows after the header line)"
                        if header else str(path))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .npy, .npz or .csv)")
    return validate(arr, dim, name=str(path))


def read_csv(path) -> tuple[np.ndarray, Optional[list]]:
    """(values (n, k) float64, header names or None) of a comma-separated file with at
    most one non-numeric header line (np.loadtxt). Every error names the file (and,
    as numpy reports it, the row and column of a non-number or of a row with a
    different number of columns); an empty file or one without data rows is an error.
    """
    path = Path(path)
    with open(path, "rb") as f:
        first = f.readline()
    try:
        first = first.decode().strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text (CSV) file: {e}") from e
    if not first:
        raise ValueError(f"{path}: file is empty (or starts with an empty line)")
    try:
        [float(v) for v in first.split(",")]
        header = None
    except ValueError:
        header = [h.strip() for h in first.split(",")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Empty input file"
            values = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64,
                                skiprows=0 if header is None else 1)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {e}" + (" (not counting the header line)"
                                           if header else "")) from e
    if values.size == 0:
        raise ValueError(f"{path}: no data rows")
    if header is not None and values.shape[1] != len(header):
        raise ValueError(f"{path}: {values.shape[1]} columns of data but {len(header)} "
                         "names in the header line")
    return values, header


def sample_batch(key: jax.Array, data, batch_size: int):
    """Uniform minibatch with replacement: data[i_1..i_B], i_b ~ U{0..n-1}.

    data (n, ...) -> (batch_size, ...); a pytree of arrays with a common leading axis
    (e.g. pairs (x0, x1)) gets the same rows from every leaf. Jittable with
    `batch_size` static. Call with key = jax.random.fold_in(base_key, step) so a resumed
    run draws the same batch at the same step.
    """
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[idx], data)


def fresh_sample_batch(sampler: Callable, batch_size: int) -> Callable:
    """Device-side batch sampler drawing NEW examples: (key, data) -> sampler(key, B).

    For `train.make_train_step(sample_batch=...)` when the data distribution has a
    known sampler (`Dataset.sampler`): `data` is ignored, so every step sees a fresh
    batch of batch_size examples and there is no finite training set to over-fit.
    The key is the step's fold_in(state.key, step) split, so a resumed run draws the
    same batches as an uninterrupted one.
    """

    def sample(key, data):
        del data
        return sampler(key, batch_size)

    return sample
