"""Image data: readers, scaling and dequantisation, splits, a sharded batch loader,
bits per dimension (docs/maths.md section 6).

Images are kept on the host as uint8 arrays (n, H, W, C) (channels last) with int32
labels (n,); a batch becomes float only on the device:

    x = 2 (k + u) / 256 - 1,  u ~ U[0, 1)^D   (uniform dequantisation, `dequantize`)
    x = 2 (k + 1/2) / 256 - 1                 (bin centres, `to_centered`)

both in (-1, 1). `quantize` inverts them: k = clip(floor((x + 1) 128), 0, 255).

Readers (each from a local path; no downloads):
- `read_idx(path)`: one IDX file (MNIST's format), gzipped or not;
- `load_mnist(directory, split)`: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz];
- `load_cifar10(directory, split)`: the python batches data_batch_1..5 / test_batch
  (the directory itself or its cifar-10-batches-py/ subfolder). The pickles are read
  with an unpickler that only builds numpy arrays, lists, dicts and strings;
- `load_digits()`: sklearn's bundled 8x8 digits, values v in 0..16 mapped to 8-bit
  levels k = round(255 v / 16) (0 -> 0, 16 -> 255), so every data set goes through
  the same 256-level pipeline; bits per dimension on digits are therefore relative
  to that 8-bit encoding of its 17 levels.
Errors name the missing or malformed file.

Sharded batches: every process computes the same global row indices of a batch
(`batch_indices(key, n, batch_size)`, key = fold_in(base, step)), gathers only the rows
that land on its own devices (`process_rows`) from its host copy, and
`shard_batch` assembles the global array with `jax.make_array_from_process_local_data`
(batch axis split over the mesh's "data" axis). Dequantisation and flips then run on
the devices (`preprocess`), keyed by the global batch, so the numbers do not depend
on the number of processes or devices. No device ever holds the full data set.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lfm_jax import distributed

__all__ = [
    "read_idx",
    "load_mnist",
    "load_cifar10",
    "load_digits",
    "LOADERS",
    "dequantize",
    "to_centered",
    "quantize",
    "random_flip",
    "preprocess",
    "ImageDataset",
    "split_images",
    "batch_indices",
    "process_rows",
    "shard_batch",
    "load_batch",
    "bits_per_dim",
]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ------------------------------------------------------------------------- readers


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzip or raw): magic 0 0 <type> <ndim>, ndim big-endian uint32
    sizes, then the values. Returns a numpy array of the stored shape (native order).

    Raises:
        FileNotFoundError: no file at path.
        ValueError: bad magic, unknown type code, or a size that does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes of data), "
                         f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def _find(directory: Path, names) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"none of {list(names)} found in {directory}")


def load_mnist(directory, split: str = "train"):
    """MNIST from its IDX files: (images uint8 (n, 28, 28, 1), labels int32 (n,)).

    split "train" reads train-*-ubyte[.gz], "test" reads t10k-*-ubyte[.gz].
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    img_path = _find(directory, [f"{prefix}-images-idx3-ubyte{s}" for s in (".gz", "")])
    lab_path = _find(directory, [f"{prefix}-labels-idx1-ubyte{s}" for s in (".gz", "")])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images (n, H, W), got "
                         f"{images.dtype} {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{lab_path}: {labels.shape[0] if labels.ndim else 0} labels for "
                         f"{images.shape[0]} images in {img_path}")
    return images[..., None], labels.astype(np.int32)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and plain containers (what CIFAR-10's batches hold)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path):
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: missing 'data' or 'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int32)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 (n, 3072), got {data.dtype} "
                         f"{data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(directory, split: str = "train"):
    """CIFAR-10 python batches: (images uint8 (n, 32, 32, 3), labels int32 (n,)).

    "train": data_batch_1..data_batch_5 (50,000 images); "test": test_batch.
    directory may be the batches folder or its parent holding cifar-10-batches-py/.
    """
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    nested = directory / "cifar-10-batches-py"
    if not (directory / names[split][0]).is_file() and nested.is_dir():
        directory = nested
    missing = [n for n in names[split] if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 batch file(s) {missing} not found in {directory}")
    parts = [_read_cifar_batch(directory / n) for n in names[split]]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def load_digits(directory=None, split: str = "all"):
    """sklearn's bundled 8x8 digits: (images uint8 (1797, 8, 8, 1), labels int32).

    The 17 levels v = 0..16 become k = round(255 v / 16). `directory` is ignored (the
    data ship with scikit-learn); split must be "all" (split with `split_images`).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    if split != "all":
        raise ValueError(f"the digits come as one set; split must be 'all', got {split!r}")
    del directory
    d = sk_load_digits()
    k = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return k[..., None], d.target.astype(np.int32)


LOADERS: dict[str, Callable] = {"mnist": load_mnist, "cifar10": load_cifar10,
                                "digits": load_digits}
"""Data set name -> loader(directory, split) -> (uint8 images (n, H, W, C), labels)."""


# ------------------------------------------------------------ scaling and flips


def dequantize(key, k, dtype=jnp.float32):
    """x = 2 (k + u) / 256 - 1, u ~ U[0, 1) per value: uint8 k (...) -> x (...) in [-1, 1)."""
    u = jax.random.uniform(key, jnp.shape(k), dtype)
    return 2.0 * (jnp.asarray(k, dtype) + u) / 256.0 - 1.0


def to_centered(k, dtype=jnp.float32):
    """Bin centres x = 2 (k + 1/2) / 256 - 1 (no noise), e.g. for classifier inputs."""
    return 2.0 * (jnp.asarray(k, dtype) + 0.5) / 256.0 - 1.0


def quantize(x):
    """Back to 8 bits: k = clip(floor((x + 1) 128), 0, 255), uint8 (inverts both maps)."""
    return jnp.clip(jnp.floor((jnp.asarray(x) + 1.0) * 128.0), 0, 255).astype(jnp.uint8)


def random_flip(key, x):
    """Flip each image of x (n, H, W, C) left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def preprocess(key, k, *, dequantise: bool = True, flip: bool = False,
               dtype=jnp.float32):
    """uint8 batch k (n, H, W, C) -> float x (n, H, W, C) in [-1, 1]: dequantised (or bin
    centres) then optionally flipped. Jittable; under jit over a sharded k the random
    numbers are those of the global array (partitionable threefry), so they do not
    depend on the sharding."""
    k_noise, k_flip = jax.random.split(key)
    x = dequantize(k_noise, k, dtype) if dequantise else to_centered(k, dtype)
    return random_flip(k_flip, x) if flip else x


# ------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train / validation / test images (uint8 (n, H, W, C), host) with int32 labels."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    name: str = "images"

    @property
    def example_shape(self) -> tuple:
        return tuple(self.train.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.example_shape)


def split_images(images, labels, n_val: int, n_test: int = 0, *, seed: int = 0,
                 num_classes: Optional[int] = None, name: str = "images") -> ImageDataset:
    """Shuffle (numpy, seeded) and split into train / val / test of sizes
    (n - n_val - n_test, n_val, n_test), e.g. MNIST's 10,000-image test split into
    a generator/classifier training set and a held-out set."""
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    n = images.shape[0]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{name}: images must be uint8 (n, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    if labels.shape != (n,):
        raise ValueError(f"{name}: {labels.shape} labels for {n} images")
    n_train = n - n_val - n_test
    if min(n_val, n_test) < 0 or n_train < 1:
        raise ValueError(f"{name}: cannot split {n} images into val {n_val}, test {n_test} "
                         f"and a non-empty train set")
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.split(perm, [n_train, n_train + n_val])
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    return ImageDataset(*(a for idx in parts for a in (images[idx], labels[idx])),
                        num_classes=num_classes, name=name)


# ---------------------------------------------------------------- sharded batches


def batch_indices(key, n: int, batch_size: int) -> np.ndarray:
    """Global row indices of one batch, uniform with replacement (as
    `data.sample_batch`); identical on every process for the same key. Computed on the
    host CPU backend so it never waits on an accelerator. int (batch_size,) numpy."""
    try:
        device = jax.devices("cpu")[0]
    except RuntimeError:  # no CPU backend (e.g. JAX_PLATFORMS=cuda): default device
        device = None
    with jax.default_device(device):
        return np.asarray(jax.random.randint(key, (int(batch_size),), 0, int(n)))


def process_rows(global_batch_size: int, mesh, batch_axis_name: str = distributed.DATA_AXIS):
    """The slice of a global batch's rows that this process's devices hold under
    P("data") on `mesh` (contiguous; all rows for one process)."""
    sharding = NamedSharding(mesh, P(batch_axis_name))
    index_map = sharding.addressable_devices_indices_map((int(global_batch_size),))
    spans = sorted({(s[0].start or 0, s[0].stop or global_batch_size)
                    for s in index_map.values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"this process's rows of the batch are not contiguous: {spans}")
    return slice(start, stop)


def shard_batch(local_arrays, mesh, global_batch_size: int):
    """Global arrays (batch axis over "data") from this process's rows of each array."""
    sharding = NamedSharding(mesh, P(distributed.DATA_AXIS))

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(
            sharding, a, (int(global_batch_size),) + a.shape[1:])

    return jax.tree_util.tree_map(put, local_arrays)


def load_batch(key, images, labels, batch_size: int, mesh):
    """One global uint8 batch and its labels, each process gathering only its rows.

    Args:
      key: the batch's key (e.g. fold_in(base, step)); the same on every process.
      images, labels: this process's host copy, uint8 (n, H, W, C) and int (n,).
      batch_size: global batch size, divisible by the mesh's data axis.
      mesh: a mesh with a "data" axis (`distributed.make_mesh()`).
    Returns:
      (k, y): jax arrays (batch_size, H, W, C) uint8 and (batch_size,) int32, sharded on
      the batch axis. Feed k to `preprocess` inside the jitted step.
    """
    distributed.check_batch_size(batch_size, mesh)
    idx = batch_indices(key, images.shape[0], batch_size)[process_rows(batch_size, mesh)]
    local = (np.asarray(images)[idx], np.asarray(labels, np.int32)[idx])
    return shard_batch(local, mesh, batch_size)


# --------------------------------------------------------------- bits per dimension


def bits_per_dim(nll_nats, dim: int):
    """bpd = NLL / (D ln 2) + 7 for the NLL in nats of x in [-1, 1]^D (section 6).

    A density p on the dequantised, scaled data gives the 8-bit discrete model
    P(k) = int p(x) dx over the bin of k (volume (2/256)^D), so
    -log2 P(k) <= -log2 p(x) + D log2(256 / 2) by Jensen: per dimension
    NLL / (D ln 2) + log2(256) - log2(2) = NLL / (D ln 2) + 7.
    """
    return jnp.asarray(nll_nats) / (dim * math.log(2.0)) + 7.0
