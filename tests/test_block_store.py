"""An LFM block's artefacts in one orbax composite checkpoint (`runs.block_store`):
items added version by version, an unfinished version ignored and removed, damaged
items (truncated, garbled, deleted files) reported and set aside, never used."""

import os
import warnings

import jax
import numpy as np
import pytest

from lfm_jax import files, networks
from lfm_jax.runs import block_store


def _template():
    return networks.velocity_mlp((2,), hidden=(8,)).init(jax.random.PRNGKey(0))


def _saved(workdir):
    """Block 1 with every item, saved in three steps as the block loop does."""
    t = _template()
    params = {"params": jax.tree_util.tree_map(np.asarray, t),
              "ema_params": jax.tree_util.tree_map(lambda p: np.asarray(p) + 1, t)}
    x = np.random.RandomState(0).randn(300, 2).astype(np.float32)
    val = (x[:40] * 2, np.linspace(-1, 1, 40))
    report = {"block": 1, "val_nll": 1.25, "moments": {"mean_err_max": 0.5}, "h": None}
    with block_store.BlockArtefacts(workdir, 1) as store:
        store.save(params=params)
        store.save(train_pushed=x)
        store.save(val_pushed=val, report=report)
    return params, x, val, report


def _version(workdir):
    art = block_store.artefacts_dir(workdir, 1)
    (v,) = [d for d in os.listdir(art) if d.isdigit()]
    return os.path.join(art, v)


def _assert_same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_items_are_added_version_by_version(tmp_path):
    workdir = str(tmp_path)
    with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
        assert store.params(_template()) is None and store.report() is None
    with pytest.raises(FileNotFoundError, match="no saved params"):
        block_store.load_params(workdir, 1, _template())
    params, x, val, report = _saved(workdir)
    assert os.listdir(block_store.artefacts_dir(workdir, 1)) == ["3"]  # one version kept
    _assert_same(block_store.load_params(workdir, 1, _template()), params)
    with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
        _assert_same(store.train_pushed(x.shape), x)
        _assert_same(store.val_pushed((40, 2)), val)
        assert store.report() == report
        with pytest.raises(files.DamagedFileError, match="expected shape"):
            store.train_pushed((300, 3))
    bigger = networks.velocity_mlp((2,), hidden=(9,)).init(jax.random.PRNGKey(0))
    with pytest.raises(files.DamagedFileError, match="params"):
        block_store.load_params(workdir, 1, bigger)


def test_unfinished_version_is_ignored_and_removed(tmp_path):
    workdir = str(tmp_path)
    _, x, _, _ = _saved(workdir)
    tmp = os.path.join(block_store.artefacts_dir(workdir, 1), "4.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(tmp, "train_pushed"))
    with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
        _assert_same(store.train_pushed(), x)
    assert os.path.isdir(tmp)  # a reader leaves it (a writer may be saving it)
    with block_store.BlockArtefacts(workdir, 1) as store:
        _assert_same(store.train_pushed(), x)
    assert not os.path.exists(tmp)


def _damage(path, how):
    if how == "delete":
        os.remove(path)
        return
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(size // 2)
        else:  # flip 8 bytes in the middle
            f.seek(size // 2)
            chunk = f.read(8)
            f.seek(size // 2)
            f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.parametrize("item", ["params", "train_pushed", "val_pushed", "report"])
@pytest.mark.parametrize("how", ["truncate", "garble", "delete"])
def test_damaged_item_is_reported_set_aside_and_the_rest_kept(tmp_path, item, how):
    workdir = str(tmp_path)
    params, x, val, report = _saved(workdir)
    version = _version(workdir)
    folder = os.path.join(version, item)
    # the files holding the item's values: OCDBT data files (d/*), the report's JSON
    paths = [os.path.join(folder, "metadata")] if item == "report" else [
        os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs
        if os.path.basename(r) == "d"]
    for path in paths:
        _damage(path, how)
    loaders = {"params": lambda s, **k: s.params(_template(), **k),
               "train_pushed": lambda s, **k: s.train_pushed(x.shape, **k),
               "val_pushed": lambda s, **k: s.val_pushed((40, 2), **k),
               "report": lambda s, **k: s.report(**k)}
    with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
        with pytest.raises(files.DamagedFileError, match=folder):
            loaders[item](store)
    assert os.path.isdir(version)  # a reader moves nothing
    with block_store.BlockArtefacts(workdir, 1) as store:
        with pytest.warns(RuntimeWarning, match=f"{folder}: damaged.*moved {version} to "
                                                f"{version}.damaged"):
            assert loaders[item](store, recover=True) is None
        store.save(**{item: {"params": params, "train_pushed": x, "val_pushed": val,
                             "report": report}[item]})
    assert os.path.isdir(version + ".damaged")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
            _assert_same(store.params(_template()), params)  # the intact items kept
            _assert_same(store.train_pushed(), x)
            _assert_same(store.val_pushed((40, 2)), val)
            assert store.report() == report
