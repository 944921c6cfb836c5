"""Tabular density-estimation benchmarks with the MAF preprocessing and splits.

POWER (6-D), GAS (8-D), HEPMASS (21-D), MINIBOONE (43-D) and BSDS300 (63-D), read
from the files of the MAF data release (Papamakarios et al. 2017,
https://zenodo.org/record/1161203, `data.tar.gz`; extract it and pass its `data/`
folder as `root`, i.e. `--config.data.path=/path/to/data`, or set $LFM_DATA):

    root/power/data.npy             root/gas/ethylene_CO.pickle (pandas pickle)
    root/hepmass/1000_train.csv     root/hepmass/1000_test.csv
    root/miniboone/data.npy         root/BSDS300/BSDS300.hdf5 (needs h5py)

The preprocessing replicates gpapamak/maf `datasets/*.py` step by step (see each
`preprocess_*`), so the splits (train / validation / test) and the normalisation are
those of the published test NLLs; test NLL is reported on the real test split.

Without downloads, `standin(name, ...)` gives a Gaussian mixture of the same
dimension with an exact log-density (so the NLL has a known floor); `load` accepts
"<name>_gmm" for it.
"""

from __future__ import annotations

import os

import numpy as np

from lfm_jax import data as data_lib

DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
FILES = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
DOWNLOAD = "https://zenodo.org/record/1161203 (file data.tar.gz)"


def data_root(path: str = "") -> str:
    """The data root: `path`, else $LFM_DATA, else ./data."""
    return os.path.expanduser(path or os.environ.get("LFM_DATA", "") or "data")


def _require(root: str, name: str) -> list:
    paths = [os.path.join(root, f) for f in FILES[name]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{name.upper()} data file(s) not found: {', '.join(missing)}. Download the MAF "
            f"preprocessed data from {DOWNLOAD}, extract it, and pass the extracted `data` "
            f"folder as the data root (--config.data.path=DIR or LFM_DATA=DIR) so that "
            f"DIR/{FILES[name][0]} exists. Without downloads use the stand-in "
            f"'{name}_gmm' (a {DIMS[name]}-D Gaussian mixture with exact density).")
    return paths


# ----------------------------------------------------------------- split helpers

def _split_tail(x, frac=0.1):
    """MAF's split: the last int(frac * n) rows are held out."""
    n_out = int(frac * x.shape[0])
    return x[:-n_out] if n_out else x, x[x.shape[0] - n_out:]


def _split_train_val_test(x):
    rest, test = _split_tail(x)
    train, val = _split_tail(rest)
    return train, val, test


def _normalise_by_train_val(train, val, test):
    """(x - mu) / s with mu, s the mean and (ddof 0) std of train and val pooled."""
    pooled = np.vstack((train, val))
    mu, s = pooled.mean(axis=0), pooled.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


# ------------------------------------------------------------------- preprocess

def preprocess_power(data: np.ndarray):
    """MAF POWER: shuffle (RandomState(42)), drop columns 3 and 1 (Global_intensity and
    Global_reactive_power), add uniform noise (gap 0.001 U, voltage 0.01 U,
    sub-metering U, time 0) drawn from the same RandomState, split 10% test then 10% of
    the rest validation (tail rows), normalise by train + validation mean / std."""
    rng = np.random.RandomState(42)
    data = np.array(data, dtype=np.float64)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _normalise_by_train_val(*_split_train_val_test(data))


def preprocess_gas(values: np.ndarray, columns):
    """MAF GAS: drop columns Meth, Eth, Time; while some column has a Pearson
    correlation > 0.98 with another, drop the first such column; normalise by the mean
    and (ddof 1) std of all rows; split 10% test, then 10% of the rest validation."""
    columns = list(columns)
    keep = [i for i, c in enumerate(columns) if c not in ("Meth", "Eth", "Time")]
    x = np.asarray(values, np.float64)[:, keep]
    while True:
        corr = np.corrcoef(x, rowvar=False)
        counts = (corr > 0.98).sum(axis=1)
        if not np.any(counts > 1):
            break
        x = np.delete(x, int(np.where(counts > 1)[0][0]), axis=1)
    x = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    return _split_train_val_test(x)


def preprocess_hepmass(train: np.ndarray, train_columns, test: np.ndarray, test_columns):
    """MAF HEPMASS (the "1000" files): keep signal rows (first column == 1) and drop that
    label column; drop the test file's last column; normalise both by the train mean
    and (ddof 1) std, matching test columns to train columns by name as pandas does
    (a train column missing from test becomes NaN, which `validate` reports); remove
    every feature whose smallest value occurs more than 5 times in the normalised
    train set (MAF's `sorted(Counter).[0] > 5` test); validation is the last 10% of
    train."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    train_columns, test_columns = list(train_columns), list(test_columns)
    train = train[train[:, 0] == 1][:, 1:]
    train_columns = train_columns[1:]
    test = test[test[:, 0] == 1][:, 1:-1]
    test_columns = test_columns[1:-1]
    if test_columns != train_columns:
        index = {c: i for i, c in enumerate(test_columns)}
        test = np.stack([test[:, index[c]] if c in index else np.full(len(test), np.nan)
                         for c in train_columns], axis=1)
    mu, s = train.mean(axis=0), train.std(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        train, test = (train - mu) / s, (test - mu) / s
    keep = []
    for j in range(train.shape[1]):
        _, counts = np.unique(train[:, j], return_counts=True)
        if counts[0] <= 5:
            keep.append(j)
    train, test = train[:, keep], test[:, keep]
    train, val = _split_tail(train)
    return train, val, test


def preprocess_miniboone(data: np.ndarray):
    """MAF MINIBOONE (data.npy already cleaned): split 10% test, then 10% of the rest
    validation, normalise by train + validation mean / std."""
    return _normalise_by_train_val(*_split_train_val_test(np.asarray(data, np.float64)))


# -------------------------------------------------------------------------- read

RAW_COLUMNS = {"power": 8, "miniboone": 43, "bsds300": 63}
"""Columns of the raw MAF files (POWER: 7 measurements + time; HEPMASS and GAS are
checked against their header / column names)."""


def _read_csv(path):
    """(values (n, k) float64, column names) of a CSV with one header line; raw values
    validated (finite, consistent columns), errors naming the file."""
    values, header = data_lib.read_csv(path)
    if header is None:
        raise ValueError(f"{path}: expected a header line of column names")
    data_lib.validate(values, len(header), name=f"{path} (rows after the header line)")
    return values, header


def _read_npy(path, name):
    return data_lib.load_npy(path, RAW_COLUMNS[name])


def _load_raw(name: str, root: str):
    """The (train, val, test) splits of `name`; the raw file contents are checked
    (shape, finite values, naming the file, row and column) before any
    preprocessing."""
    paths = _require(root, name)
    if name == "power":
        return preprocess_power(_read_npy(paths[0], name))
    if name == "miniboone":
        return preprocess_miniboone(_read_npy(paths[0], name))
    if name == "hepmass":
        (tr, tr_cols), (te, te_cols) = _read_csv(paths[0]), _read_csv(paths[1])
        return preprocess_hepmass(tr, tr_cols, te, te_cols)
    if name == "gas":
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("GAS is stored as a pandas pickle: pip install pandas") from e
        try:
            frame = pd.read_pickle(paths[0])
            values = frame.to_numpy(dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - unpickling raises many types
            raise ValueError(f"{paths[0]}: cannot read the GAS pandas pickle: "
                             f"{type(e).__name__}: {e}") from e
        missing = {"Meth", "Eth", "Time"} - set(frame.columns)
        if missing:
            raise ValueError(f"{paths[0]}: columns {sorted(missing)} missing; columns: "
                             f"{list(frame.columns)}")
        data_lib.validate(values, None, name=paths[0])
        return preprocess_gas(values, frame.columns)
    if name == "bsds300":
        try:
            import h5py
        except ImportError as e:
            raise ImportError("BSDS300 is stored as HDF5: pip install h5py") from e
        splits = []
        try:
            with h5py.File(paths[0], "r") as f:
                for k in ("train", "validation", "test"):
                    splits.append(data_lib.validate(np.asarray(f[k][:]), RAW_COLUMNS[name],
                                                    name=f"{paths[0]}[{k}]"))
        except (OSError, KeyError) as e:
            raise ValueError(f"{paths[0]}: cannot read the BSDS300 HDF5 file: {e}") from e
        return tuple(splits)
    raise ValueError(f"unknown tabular data set {name!r}; known: {sorted(DIMS)}")


def load(name: str, path: str = "", seed: int = 0, **standin_kw) -> data_lib.Dataset:
    """A tabular `Dataset` (float32 splits, validated; log_prob None).

    Args:
      name: one of DIMS ("power", "gas", "hepmass", "miniboone", "bsds300"), or
        "<name>_gmm" for the Gaussian-mixture stand-in of that dimension.
      path: data root (see the module docstring); "" means $LFM_DATA or ./data.
      seed: used by the stand-ins only (the MAF splits are fixed).
    Raises:
      FileNotFoundError: a data file is missing (the message says what to download
        and where to put it).
    """
    name = name.lower()
    if name.endswith("_gmm") and name[:-4] in DIMS:
        return standin(name[:-4], seed=seed, **standin_kw)
    if name not in DIMS:
        raise ValueError(f"unknown tabular data set {name!r}; known: "
                         f"{sorted(DIMS) + [n + '_gmm' for n in sorted(DIMS)]}")
    splits = _load_raw(name, data_root(path))
    dim = splits[0].shape[1]
    # after preprocessing (e.g. a constant column divided by its zero std)
    train, val, test = (data_lib.validate(np.asarray(s, np.float32), dim,
                                          f"{name} {k} split after preprocessing")
                        for s, k in zip(splits, ("train", "val", "test")))
    return data_lib.Dataset(train=train, val=val, test=test, dim=dim, log_prob=None,
                            name=name)


def standin(name: str, n_train: int = 50_000, n_val: int = 5_000, n_test: int = 5_000,
            seed: int = 0, n_components: int = 10) -> data_lib.Dataset:
    """Gaussian mixture with the dimension of a tabular data set and exact log_prob
    (`data.make_dataset("gmm", ...)`), so the pipeline runs with a known NLL floor."""
    ds = data_lib.make_dataset("gmm", n_train, n_val, n_test, seed, dim=DIMS[name],
                               n_components=n_components)
    return data_lib.Dataset(train=ds.train, val=ds.val, test=ds.test, dim=ds.dim,
                            log_prob=ds.log_prob, name=f"{name}_gmm", entropy=ds.entropy)
