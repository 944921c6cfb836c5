"""Your own data: an (n, dim) table in a .npy, .npz or .csv file as a `data.Dataset`.

    --config.data.name=file --config.data.path=x.npy      (or .npz / .csv)
    dataset = user_data.load("x.npy", seed=0)              (the same, from Python)

Reading (`read_splits`):
- .npy: one (n, dim) array.
- .npz: either arrays named "train" and "test" (and optionally "val"), used as the
  splits, or one array (the only one, else the first of "x", "data", "arr_0"), split
  as below.
- .csv: comma-separated numbers, one example per line, optionally one header line
  (detected: a first line with a field that is not a number); blank lines and lines
  starting with "#" are dropped, and rows are counted after them.

Validation, before any other work: the file exists and has a known suffix; each array
is 2-D, non-empty, real-valued (ints and floats; no bools, complex or objects) with the
same number of columns in every split; every entry is finite. Errors name the file
(and the .npz key), and for NaN / Inf the first bad data row and column (0-based, rows
counted after any header line) and how many rows are bad.

Splits: without splits in the file, the rows are split at random with
`numpy.random.default_rng(seed)`: test = round(test_fraction n) rows, val =
round(val_fraction n) rows (each at least 1), train = the rest (at least 2); each split
keeps the file's row order. A file with "train" and "test" but no "val" gets its val
split carved from train the same way (val_fraction of the train rows).

Standardisation (`Standardization`): z = (x - m) / s per column, m and s (population
standard deviation, ddof = 0) from the TRAIN split only and applied to all three splits.
A column constant on train (s = 0) is an error. Densities transform as
log p_x(x) = log p_z(z) - sum_j log s_j, so an NLL in data units is the standardised
NLL plus `Standardization.log_scale` (= sum_j log s_j).

The returned splits are float32 numpy arrays; `Dataset.log_prob` is None (the density is
unknown) and `Dataset.name` is the file name without suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lfm_jax import data as data_lib

__all__ = ["SUFFIXES", "Standardization", "read_splits", "load"]

SUFFIXES = (".npy", ".npz", ".csv")
SPLIT_KEYS = ("train", "val", "test")


# --------------------------------------------------------------------------- checks


def _check(arr: np.ndarray, where: str, dim: Optional[int] = None) -> np.ndarray:
    """A finite, real, non-empty (n, dim) array as float64; ValueError naming `where`."""
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{where}: expected real numbers (int or float), got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (save x[:, None] for 1-D data)" if arr.ndim == 1 else ""
        raise ValueError(f"{where}: expected a 2-D array (n, dim), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: array is empty, shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{where}: {arr.shape[1]} columns, but the other splits have {dim}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(arr[row, col]) else "Inf"
        n_bad = int(bad.any(axis=1).sum())
        raise ValueError(f"{where}: {kind} at row {row}, column {col} (0-based; {n_bad} of "
                         f"{arr.shape[0]} rows hold NaN or Inf)")
    return arr


# --------------------------------------------------------------------------- reading


def _read_csv(path: Path) -> np.ndarray:
    """Rows of numbers; blank and "#" lines dropped, a non-numeric first line skipped."""
    with open(path) as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no data lines")

    def is_number(field):
        try:
            float(field)
            return True
        except ValueError:
            return False

    if not all(is_number(field) for field in lines[0].strip().split(",")):
        lines = lines[1:]  # a header
    if not lines:
        raise ValueError(f"{path}: a header line but no data lines")
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2, comments=None)
    except ValueError as e:
        raise ValueError(f"{path}: not a numeric CSV table ({e})") from None


def _split_rows(n: int, fractions: tuple[float, ...], seed: int, where: str):
    """Random disjoint row-index sets of sizes round(f n) (each >= 1) and the rest
    (>= 2), each sorted; the rest comes first."""
    sizes = [max(1, int(round(f * n))) for f in fractions]
    if n - sum(sizes) < 2:
        raise ValueError(f"{where}: {n} rows are too few to split off {sizes} rows and "
                         f"keep at least 2 for training")
    perm = np.random.default_rng(seed).permutation(n)
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(perm[start:start + size]))
        start += size
    return [np.sort(perm[start:])] + parts


def read_splits(path, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) float64 arrays of a file, validated, NOT standardised.

    See the module docstring for the formats, checks and the seeded split. The same
    path, seed and fractions always give the same splits.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown suffix, bad fractions, bad content (naming the file, key,
            row and column), or too few rows to split.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (expected a .npy, .npz or "
                                f".csv file holding an (n, dim) array)")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .npy, .npz or .csv)")

    given = {}
    if suffix == ".npy":
        try:
            table = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: cannot read as a numeric .npy array ({e})") from None
        table = _check(table, str(path))
    elif suffix == ".csv":
        table = _check(_read_csv(path), str(path))
    else:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if any(k in keys for k in SPLIT_KEYS):
                missing = [k for k in ("train", "test") if k not in keys]
                extra = [k for k in keys if k not in SPLIT_KEYS]
                if missing or extra:
                    raise ValueError(f"{path}: a file of splits needs arrays 'train' and "
                                     f"'test' (and optionally 'val') and nothing else; it "
                                     f"has {keys}")
                dim = None
                for k in SPLIT_KEYS:
                    if k in keys:
                        given[k] = _check(f[k], f"{path}[{k!r}]", dim)
                        dim = given[k].shape[1]
                table = None
            else:
                key = keys[0] if len(keys) == 1 else next(
                    (k for k in ("x", "data", "arr_0") if k in keys), None)
                if key is None:
                    raise ValueError(f"{path}: expected one array, arrays named 'x', 'data' "
                                     f"or 'arr_0', or splits 'train'/'val'/'test'; it has {keys}")
                table = _check(f[key], f"{path}[{key!r}]")

    if table is not None:
        train_idx, val_idx, test_idx = _split_rows(
            len(table), (val_fraction, test_fraction), seed, str(path))
        return table[train_idx], table[val_idx], table[test_idx]
    train, test = given["train"], given["test"]
    if "val" in given:
        return train, given["val"], test
    train_idx, val_idx = _split_rows(len(train), (val_fraction,), seed, f"{path}['train']")
    return train[train_idx], train[val_idx], test


# --------------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class Standardization:
    """Per-column affine map z = (x - mean) / std, fitted on the train split.

    Attributes:
        mean, std: float64 arrays of shape (dim,); std > 0.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray, where: str = "train") -> "Standardization":
        """Column means and population standard deviations (ddof = 0) of train (n, dim).

        Raises:
            ValueError: a constant column (std 0), naming it.
        """
        train = np.asarray(train, np.float64)
        mean, std = train.mean(axis=0), train.std(axis=0)
        constant = np.flatnonzero(~(std > 0.0))
        if constant.size:
            raise ValueError(f"{where}: column {constant[0]} is constant on the training "
                             f"split (standard deviation 0; {constant.size} such columns); "
                             f"drop it, it carries no density")
        return cls(mean=mean, std=std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x (n, dim) in data units -> standardised (n, dim), float32."""
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)

    def invert(self, z: np.ndarray) -> np.ndarray:
        """Standardised z (n, dim) -> data units (n, dim), float64 (e.g. samples)."""
        return np.asarray(z, np.float64) * self.std + self.mean

    @property
    def log_scale(self) -> float:
        """sum_j log std_j: NLL in data units = standardised NLL + log_scale (nats)."""
        return float(np.sum(np.log(self.std)))


def load(path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
         standardize: bool = True) -> data_lib.Dataset:
    """A validated `data.Dataset` from a file, split with `seed`, standardised with the
    train statistics (`Standardization.fit(read_splits(...)[0])` gives them back).

    Args:
        path: a .npy, .npz or .csv file (see the module docstring).
        seed: seed of the random split (ignored for splits stored in the file).
        val_fraction, test_fraction: split fractions when the file holds one table.
        standardize: False keeps data units (cast to float32).
    """
    train, val, test = read_splits(path, seed, val_fraction, test_fraction)
    if standardize:
        scale = Standardization.fit(train, str(path))
        train, val, test = (scale.apply(s) for s in (train, val, test))
    splits = [data_lib.validate(np.asarray(s, np.float32), train.shape[1], f"{path}/{k}")
              for s, k in zip((train, val, test), SPLIT_KEYS)]
    return data_lib.Dataset(*splits, dim=int(train.shape[1]), log_prob=None,
                            name=Path(path).stem, entropy=None)
