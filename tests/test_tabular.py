"""Tabular loaders: MAF preprocessing on tiny files, clear errors, stand-ins."""

import os

import numpy as np
import pytest

from lfm_jax import tabular


def test_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        tabular.load("power", str(tmp_path))
    msg = str(err.value)
    assert "zenodo.org/record/1161203" in msg
    assert str(tmp_path / "power" / "data.npy") in msg
    assert "power_gmm" in msg
    with pytest.raises(FileNotFoundError, match="1000_test.csv"):
        (tmp_path / "hepmass").mkdir()
        np.savetxt(tmp_path / "hepmass" / "1000_train.csv", np.ones((3, 3)), delimiter=",")
        tabular.load("hepmass", str(tmp_path))
    with pytest.raises(ValueError, match="unknown tabular"):
        tabular.load("nope", str(tmp_path))


def test_power_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(200, 8)) * np.arange(1, 9) + np.arange(8)  # 7 features + time
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    ds = tabular.load("power", str(tmp_path))
    assert ds.dim == 6 and ds.train.dtype == np.float32
    # 10% test (20 rows), then 10% of the remaining 180 for validation (18 rows).
    assert (len(ds.train), len(ds.val), len(ds.test)) == (162, 18, 20)
    pooled = np.vstack([ds.train, ds.val]).astype(np.float64)
    np.testing.assert_allclose(pooled.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(pooled.std(0), 1.0, atol=1e-5)
    # Columns 1 and 3 are dropped; the last (time) column gets no noise, so it is the
    # shuffled raw column 7, normalised.
    shuffled = raw.copy()
    np.random.RandomState(42).shuffle(shuffled)
    t = shuffled[:, 7]
    expected = (t - t[:180].mean()) / t[:180].std()
    np.testing.assert_allclose(ds.test[:, -1], expected[-20:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.train[:, -1], expected[:162], rtol=1e-5, atol=1e-5)
    # The sub-metering columns carry U[0, 1) noise: not equal to the raw column.
    assert np.corrcoef(ds.train[:, 2], shuffled[:162, 4])[0, 1] > 0.9
    assert not np.allclose(ds.train[:, 2], (shuffled[:162, 4] - shuffled[:180, 4].mean())
                           / shuffled[:180, 4].std(), atol=1e-3)


def test_miniboone_preprocessing(tmp_path):
    raw = np.random.default_rng(1).normal(size=(100, 43)) * 3 + 2
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    ds = tabular.load("miniboone", str(tmp_path))
    assert (len(ds.train), len(ds.val), len(ds.test), ds.dim) == (81, 9, 10, 43)
    mu, s = raw[:90].mean(0), raw[:90].std(0)
    np.testing.assert_allclose(ds.test, (raw[90:] - mu) / s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.val, (raw[81:90] - mu) / s, rtol=1e-5, atol=1e-5)


def test_hepmass_preprocessing(tmp_path):
    rng = np.random.default_rng(2)

    def table(n, extra):
        label = rng.integers(0, 2, n)
        f0 = rng.normal(size=n)
        f1 = rng.integers(0, 3, n).astype(float)  # discrete: removed
        f2 = rng.normal(size=n) * 2
        mass = np.full(n, 1000.0)  # constant: removed
        cols = [label, f0, f1, f2, mass] + ([rng.normal(size=n)] if extra else [])
        return np.stack(cols, 1)

    train, test = table(120, False), table(40, True)
    (tmp_path / "hepmass").mkdir()
    header = "# label,f0,f1,f2,mass"
    np.savetxt(tmp_path / "hepmass" / "1000_train.csv", train, delimiter=",",
               header=header, comments="")
    np.savetxt(tmp_path / "hepmass" / "1000_test.csv", test, delimiter=",",
               header=header + ",junk", comments="")
    ds = tabular.load("hepmass", str(tmp_path))
    sig_tr, sig_te = train[train[:, 0] == 1], test[test[:, 0] == 1]
    keep = [1, 3]  # f0, f2
    mu, s = sig_tr[:, keep].mean(0), sig_tr[:, keep].std(0, ddof=1)
    n_val = int(0.1 * len(sig_tr))
    assert ds.dim == 2
    np.testing.assert_allclose(ds.train, (sig_tr[:-n_val, keep] - mu) / s, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ds.val, (sig_tr[-n_val:, keep] - mu) / s, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ds.test, (sig_te[:, keep] - mu) / s, rtol=1e-5, atol=1e-5)


def test_gas_preprocessing():
    rng = np.random.default_rng(3)
    n = 200
    a, b = rng.normal(size=n), rng.normal(size=n)
    values = np.stack([rng.normal(size=n), a, a + 1e-3 * rng.normal(size=n), b,
                       rng.normal(size=n), rng.normal(size=n)], 1)
    columns = ["Time", "X1", "X1copy", "X2", "Meth", "Eth"]
    train, val, test = tabular.preprocess_gas(values, columns)
    # Time, Meth, Eth dropped; X1 (first of the correlated pair) removed.
    x = values[:, [2, 3]]
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    assert (len(train), len(val), len(test)) == (162, 18, 20)
    np.testing.assert_allclose(np.vstack([train, val, test]), x)


def test_standin_has_dimension_and_density():
    ds = tabular.load("gas_gmm", n_train=100, n_val=10, n_test=10)
    assert ds.dim == 8 and ds.train.shape == (100, 8)
    assert np.isfinite(float(ds.log_prob(ds.test[0])))


def _power_file(tmp_path, raw=None):
    (tmp_path / "power").mkdir(exist_ok=True)
    path = tmp_path / "power" / "data.npy"
    if raw is not None:
        np.save(path, raw)
    return path


def test_nan_in_raw_file_is_reported_at_its_row_and_column(tmp_path):
    raw = np.random.default_rng(0).normal(size=(200, 8))
    raw[17, 5] = np.nan
    path = _power_file(tmp_path, raw)
    with pytest.raises(ValueError) as err:
        tabular.load("power", str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: row 17, column 5 is nan"), msg
    assert "in 1 of 200 rows" in msg


@pytest.mark.parametrize("content, match", [
    (np.zeros(50), "expected a 2-D array"),
    (np.zeros((50, 5)), "wrong number of columns, expected dim 8, got 5"),
    (np.zeros((0, 8)), "array is empty"),
    (b"", "not a readable .npy file"),
    (b"\x00junk bytes, not an array" * 3, "not a readable .npy file"),
])
def test_bad_raw_npy_names_the_file(tmp_path, content, match):
    path = _power_file(tmp_path)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(ValueError, match=match) as err:
        tabular.load("power", str(tmp_path))
    assert str(err.value).startswith(str(path))


def test_truncated_npy_names_the_file(tmp_path):
    path = _power_file(tmp_path, np.ones((100, 8)))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="not a readable .npy file") as err:
        tabular.load("power", str(tmp_path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("train_text, match", [
    ("a,b,c\n1,2,3\n1,2\n", "number of columns changed"),
    ("a,b,c\n1,2,3\n1,x,3\n", "could not convert string 'x'"),
    ("", "file is empty"),
    ("a,b,c\n", "no data rows"),
    ("a,b,c\n1,2,3\n1,nan,3\n", "row 1, column 1 is nan"),
])
def test_bad_hepmass_csv_names_the_file(tmp_path, train_text, match):
    (tmp_path / "hepmass").mkdir()
    train = tmp_path / "hepmass" / "1000_train.csv"
    train.write_text(train_text)
    (tmp_path / "hepmass" / "1000_test.csv").write_text("a,b,c,d\n1,2,3,4\n")
    with pytest.raises(ValueError, match=match) as err:
        tabular.load("hepmass", str(tmp_path))
    assert str(err.value).startswith(str(train))
