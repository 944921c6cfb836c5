"""lfm_jax.user_data: files of the user's own data as validated, standardised splits."""

import numpy as np
import pytest

from lfm_jax import data, user_data


def _table(n=100, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.1]) + np.array([5.0, -2.0, 0.0])


def _rows(a):
    return {tuple(r) for r in np.asarray(a, np.float64).round(9)}


def test_npy_split_is_seeded_disjoint_and_standardised_with_train_stats(tmp_path):
    x = _table()
    path = tmp_path / "x.npy"
    np.save(path, x)
    train, val, test = user_data.read_splits(path, seed=3)
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert _rows(train) | _rows(val) | _rows(test) == _rows(x)
    assert len(_rows(train) & _rows(val)) == len(_rows(train) & _rows(test)) == 0
    # each split keeps the file's row order
    for split in (train, val, test):
        idx = [int(np.flatnonzero((x == r).all(axis=1))[0]) for r in split]
        assert idx == sorted(idx)
    again = user_data.read_splits(path, seed=3)
    other = user_data.read_splits(path, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, test)))
    assert not np.array_equal(other[2], test)

    ds = user_data.load(path, seed=3)
    assert isinstance(ds, data.Dataset) and ds.dim == 3 and ds.name == "x"
    assert ds.log_prob is None and ds.train.dtype == np.float32
    np.testing.assert_allclose(ds.train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ds.train.std(axis=0), 1.0, rtol=1e-6)
    m, s = train.mean(axis=0), train.std(axis=0)
    np.testing.assert_allclose(ds.val, (val - m) / s, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds.test, (test - m) / s, rtol=1e-6, atol=1e-6)
    raw = user_data.load(path, seed=3, standardize=False)
    np.testing.assert_allclose(raw.test, test, rtol=1e-6)


def test_standardization_inverts_and_shifts_log_density_by_log_scale():
    x = _table(50)
    scale = user_data.Standardization.fit(x)
    z = scale.apply(x)
    np.testing.assert_allclose(scale.invert(z), x, rtol=1e-6, atol=1e-5)
    # x ~ N(mean, diag(std^2)) has log p_x(x) = log N(z; 0, I) - sum log std
    d = x.shape[1]
    log_px = (-0.5 * np.sum(((x - scale.mean) / scale.std) ** 2, axis=1)
              - np.sum(np.log(scale.std)) - 0.5 * d * np.log(2 * np.pi))
    log_pz = -0.5 * np.sum(np.asarray(z, np.float64) ** 2, axis=1) - 0.5 * d * np.log(2 * np.pi)
    np.testing.assert_allclose(log_px, log_pz - scale.log_scale, rtol=1e-6)
    with pytest.raises(ValueError, match="column 1 is constant"):
        user_data.Standardization.fit(np.c_[x[:, :1], np.ones(50)])


def test_csv_with_header_and_comments_equals_npy(tmp_path):
    x = _table(40)
    np.save(tmp_path / "x.npy", x)
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in x)
    (tmp_path / "h.csv").write_text("# exported\na,b,c\n" + body + "\n")
    (tmp_path / "n.csv").write_text(body + "\n")
    ref = user_data.load(tmp_path / "x.npy", seed=1)
    for name in ("h.csv", "n.csv"):
        ds = user_data.load(tmp_path / name, seed=1)
        for a, b in zip((ds.train, ds.val, ds.test), (ref.train, ref.val, ref.test)):
            np.testing.assert_array_equal(a, b)


def test_npz_splits_in_the_file_are_used(tmp_path):
    tr, va, te = _table(30, seed=1), _table(7, seed=2), _table(9, seed=3)
    np.savez(tmp_path / "s.npz", train=tr, val=va, test=te)
    ds = user_data.load(tmp_path / "s.npz", seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 7, 9)
    m, s = tr.mean(axis=0), tr.std(axis=0)
    np.testing.assert_allclose(ds.test, (te - m) / s, rtol=1e-6, atol=1e-6)
    # no val: carved from train with the seed; test untouched
    np.savez(tmp_path / "t.npz", train=tr, test=te)
    train, val, test = user_data.read_splits(tmp_path / "t.npz", seed=0)
    assert (len(train), len(val)) == (27, 3) and _rows(train) | _rows(val) == _rows(tr)
    np.testing.assert_array_equal(test, te)
    # one array: split like a .npy
    np.savez(tmp_path / "one.npz", x=tr)
    np.save(tmp_path / "one.npy", tr)
    a, b = user_data.load(tmp_path / "one.npz"), user_data.load(tmp_path / "one.npy")
    np.testing.assert_array_equal(a.test, b.test)


def test_errors_name_the_file_row_and_column(tmp_path):
    x = _table(20)
    x[7, 2] = np.nan
    x[9, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"nan\.npy: NaN at row 7, column 2 .*2 of 20 rows"):
        user_data.load(tmp_path / "nan.npy")
    (tmp_path / "inf.csv").write_text("x,y\n1,2\n3,inf\n5,6\n7,8\n")
    with pytest.raises(ValueError, match=r"inf\.csv: Inf at row 1, column 1"):
        user_data.load(tmp_path / "inf.csv")
    (tmp_path / "word.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"word\.csv: not a numeric CSV table"):
        user_data.load(tmp_path / "word.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4,5\n")
    with pytest.raises(ValueError, match=r"ragged\.csv"):
        user_data.load(tmp_path / "ragged.csv")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        user_data.load(tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"x\.txt: unsupported file type"):
        user_data.load(tmp_path / "x.txt")
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    with pytest.raises(ValueError, match=r"flat\.npy: expected a 2-D array .*x\[:, None\]"):
        user_data.load(tmp_path / "flat.npy")
    np.save(tmp_path / "bool.npy", np.ones((10, 2), bool))
    with pytest.raises(ValueError, match=r"bool\.npy: expected real numbers"):
        user_data.load(tmp_path / "bool.npy")
    np.savez(tmp_path / "dims.npz", train=_table(10), test=_table(5)[:, :2])
    with pytest.raises(ValueError, match=r"dims\.npz\['test'\]: 2 columns.*3"):
        user_data.load(tmp_path / "dims.npz")
    np.savez(tmp_path / "half.npz", train=_table(10), val=_table(5))
    with pytest.raises(ValueError, match=r"half\.npz: a file of splits needs .*'test'"):
        user_data.load(tmp_path / "half.npz")
    np.savez(tmp_path / "two.npz", a=_table(10), b=_table(10))
    with pytest.raises(ValueError, match=r"two\.npz: expected one array"):
        user_data.load(tmp_path / "two.npz")
    np.save(tmp_path / "tiny.npy", _table(3))
    with pytest.raises(ValueError, match=r"tiny\.npy: 3 rows are too few"):
        user_data.load(tmp_path / "tiny.npy")
    np.save(tmp_path / "ok.npy", _table(20))
    with pytest.raises(ValueError, match="test_fraction"):
        user_data.load(tmp_path / "ok.npy", test_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        user_data.load(tmp_path / "ok.npy", val_fraction=0.5, test_fraction=0.5)
