"""Damaged files: checkpoint fallback, torn JSON-lines, atomically saved side files."""

import json
import os
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import checkpoint, files
from lfm_jax import logging as log_lib


def _state(v):
    return {"w": jnp.full((64, 8), float(v)), "b": jnp.arange(8.0) + v}


def _saved(directory, steps=(1, 2, 3)):
    with checkpoint.Checkpointer(directory, keep=5) as ckpt:
        for s in steps:
            ckpt.save(s, _state(s))
    return directory


def _data_file(step_dir):
    # orbax merges the per-process OCDBT stores into <step>/default/d/ at commit
    d = os.path.join(step_dir, "default", "d")
    return os.path.join(d, sorted(os.listdir(d))[0])


@pytest.mark.parametrize("damage", ["truncate_data", "delete_data", "delete_manifest"])
def test_restore_falls_back_to_newest_intact_checkpoint(tmp_path, damage):
    directory = _saved(str(tmp_path / "ckpt"))
    latest = os.path.join(directory, "3")
    if damage == "truncate_data":
        path = _data_file(latest)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "delete_data":
        os.remove(_data_file(latest))
    else:
        os.remove(os.path.join(latest, "default", "manifest.ocdbt"))
    with checkpoint.Checkpointer(directory, keep=5) as ckpt:
        with pytest.warns(RuntimeWarning, match=f"checkpoint {latest} is damaged"):
            restored = ckpt.restore(_state(0))
        np.testing.assert_array_equal(restored["b"], np.arange(8.0) + 2)
        assert ckpt.latest_step() == 2
        assert os.path.isdir(latest + checkpoint.DAMAGED_SUFFIX)
        # the run continues: step 3 can be saved again
        ckpt.save(3, _state(3))
    with checkpoint.Checkpointer(directory) as ckpt:
        np.testing.assert_array_equal(ckpt.restore(_state(0))["b"], np.arange(8.0) + 3)


def test_restore_with_every_checkpoint_damaged_names_them(tmp_path):
    directory = _saved(str(tmp_path / "ckpt"), steps=(1,))
    os.remove(_data_file(os.path.join(directory, "1")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with checkpoint.Checkpointer(directory) as ckpt:
            with pytest.raises(checkpoint.CheckpointError, match=os.path.join(directory, "1")):
                ckpt.restore(_state(0))


def test_interval_policy_saves_first_step_past_each_multiple(tmp_path):
    """orbax's manager decides (`PastMultiplePolicy`): fused calls of 3 steps with an
    interval of 20 save at 21, 42, 60, 81 (orbax's FixedIntervalPolicy: only at 60);
    a restart continues from the newest checkpoint; interval 0 never saves."""
    directory = str(tmp_path / "ckpt")
    with checkpoint.Checkpointer(directory, save_every=20, keep=10, async_save=False) as ckpt:
        assert ckpt.manager.should_save(21)  # the policy is the manager's
        for step in range(3, 90, 3):
            if ckpt.should_save(step):
                ckpt.save(step, _state(step))
        assert ckpt.all_steps() == [21, 42, 60, 81]
        assert not ckpt.should_save(81) and not ckpt.should_save(60)
    with checkpoint.Checkpointer(directory, save_every=20) as ckpt:
        assert not ckpt.should_save(99) and ckpt.should_save(100)
    with checkpoint.Checkpointer(directory, save_every=0) as ckpt:
        assert not ckpt.should_save(10_000)


def test_set_aside_numbers_taken_names(tmp_path):
    for i in range(3):
        (tmp_path / "a").mkdir()
        moved = checkpoint.set_aside(str(tmp_path / "a"))
        assert moved == str(tmp_path / "a.damaged") + ("" if i == 0 else f".{i}")
        assert os.path.isdir(moved) and not os.path.exists(tmp_path / "a")
    assert checkpoint.set_aside(str(tmp_path / "a")) is None


def test_empty_directory_returns_target(tmp_path):
    target = _state(7)
    with checkpoint.Checkpointer(str(tmp_path / "none")) as ckpt:
        assert ckpt.restore(target) is target


def _write_torn(path, records, torn='{"step": 3, "lo'):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(torn)


def test_torn_last_jsonl_line_is_dropped_with_warning(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    _write_torn(path, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    with pytest.warns(RuntimeWarning, match=f"{path}: dropping the torn last line 3"):
        assert [r["step"] for r in log_lib.read_jsonl(path)] == [1, 2]
    with pytest.warns(RuntimeWarning, match="torn"):
        log_lib.truncate_jsonl(path, 5)
    log_lib.MetricsWriter(path).write(3, loss=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in log_lib.read_jsonl(path)] == [1, 2, 3]


def test_bad_jsonl_line_in_the_middle_names_file_and_line(tmp_path):
    path = str(tmp_path / "loss.jsonl")
    with open(path, "w") as f:
        f.write('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="loss.jsonl: line 2"):
        log_lib.read_jsonl(path)


def test_side_files_round_trip_and_damage(tmp_path):
    x = np.arange(120, dtype=np.float32).reshape(40, 3)
    tree = {"params": {"w": np.ones((3, 2), np.float32)}, "ema_params": {"w": np.zeros((3, 2))}}
    p_npy, p_json, p_mp = (str(tmp_path / n) for n in ("a.npy", "r.json", "p.msgpack"))
    files.save_npy(p_npy, x)
    files.save_json(p_json, {"nll": np.float32(1.5), "v": np.arange(2)})
    files.save_msgpack(p_mp, tree)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    np.testing.assert_array_equal(files.load_npy(p_npy, shape=(None, 3)), x)
    assert files.load_json(p_json) == {"nll": 1.5, "v": [0, 1]}
    loaded = files.load_msgpack(p_mp, tree)
    np.testing.assert_array_equal(loaded["params"]["w"], tree["params"]["w"])
    with pytest.raises(files.DamagedFileError, match="expected shape"):
        files.load_npy(p_npy, shape=(40, 2))
    with pytest.raises(files.DamagedFileError, match="p.msgpack"):
        files.load_msgpack(p_mp, {"params": {"w": np.ones((4, 2))}, "ema_params": {"w": 0}})
    for path in (p_npy, p_json, p_mp):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 7)
    with pytest.raises(files.DamagedFileError, match="a.npy"):
        files.load_npy(p_npy)
    with pytest.raises(files.DamagedFileError, match="r.json"):
        files.load_json(p_json)
    with pytest.raises(files.DamagedFileError, match="p.msgpack"):
        files.load_msgpack(p_mp, tree)
    # a derived file: None (recompute) with a warning naming it
    with pytest.warns(RuntimeWarning, match="a.npy"):
        assert files.load_or_none(files.load_npy, p_npy) is None
    assert os.path.exists(p_npy + ".damaged") and not os.path.exists(p_npy)
    assert files.load_or_none(files.load_npy, p_npy) is None  # missing: no warning
    with pytest.raises(FileNotFoundError, match="a.npy"):
        files.load_npy(p_npy)
