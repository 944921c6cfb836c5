"""Whole jobs (`runs.get(method)(config, workdir)`) with tiny settings: divergence and
restart, damaged block artefacts, training time and steps over restarts, NLL warnings."""

import json
import os

import numpy as np
import pytest

from lfm_jax import runs, train
from lfm_jax.runs import provenance, validation


def _tiny(method, objective="lsd"):
    """A tiny locked config of `method`: a few seconds per job on one CPU device."""
    from configs import default, flow_map

    config = flow_map.get_config(f"{objective},quick") if method == "flow_map" else (
        default.get_config())
    with config.unlocked():
        config.method = method
    config.data.n_train, config.data.n_val, config.data.n_test = 256, 64, 64
    config.model.hidden = (16, 16)
    config.model.num_frequencies = 2
    t = config.train
    t.steps, t.batch_size, t.steps_per_call, t.checkpoint_every = 4, 32, 1, 1
    t.warmup_steps, t.num_devices, t.lr = 0, 1, 1e-3
    e = config.eval
    e.n_samples, e.nll_examples, e.chunk_size = 64, 16, 64
    e.ode.solver, e.ode.num_steps = "euler", 2  # fixed steps: compile fast
    c = config.lfm
    c.num_blocks, c.step_c, c.free_last_block, c.steps_per_block = 2, 0.3, True, 4
    c.push_ode.solver, c.push_ode.num_steps = "euler", 2
    c.chunk_size, c.n_val = 128, 32
    config.flow_map.sample_steps = (1, 2)
    return default.locked(config) if method != "flow_map" else config


def _diverge_then_resume(config, workdir, kept_in):
    """lr = 1e6 stops with NonFiniteLossError naming the kept checkpoint folder; the
    same workdir with lr = 1e-3 then runs to the end. Returns the final metrics."""
    config.train.lr = 1e6
    with pytest.raises(train.NonFiniteLossError, match="stopped") as err:
        runs.get(config.method)(config, workdir)
    assert kept_in in str(err.value)
    assert os.path.exists(os.path.join(workdir, provenance.DIVERGED_FILE))
    assert not [p for p in os.listdir(os.path.join(workdir, kept_in)) if "tmp" in p]
    config.train.lr = 1e-3
    results = runs.get(config.method)(config, workdir)
    assert not os.path.exists(os.path.join(workdir, provenance.DIVERGED_FILE))
    with open(os.path.join(workdir, provenance.RUNS_FILE)) as f:
        records = [json.loads(line) for line in f]
    assert [r["resumed"] for r in records] == [False, True]
    assert records[1]["changed"] == {"train.lr": [1e6, 1e-3]}
    return results


def test_fm_diverges_then_resumes_with_lower_lr_and_refuses_other_changes(tmp_path):
    config, workdir = _tiny("fm"), str(tmp_path)
    results = _diverge_then_resume(config, workdir, "ckpt")
    assert results["steps"] == 4 and np.isfinite(results["test_nll"])
    assert results["energy_distance_biased"] >= 0
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert metrics["train_time_s"] >= json.load(open(tmp_path / "train_clock.json"))[
        "train_time_s"] - 1e-9
    # a change that alters training is refused before any work, naming the key
    config.train.batch_size = 16
    with pytest.raises(provenance.ConfigChangedError, match=r"train\.batch_size: 32 -> 16"):
        runs.get("fm")(config, workdir)
    config.train.batch_size, config.train.steps = 32, 0
    with pytest.raises(validation.InvalidConfigError, match=r"config\.train\.steps"):
        runs.get("fm")(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_flow_map_diverges_then_resumes_with_lower_lr(tmp_path):
    results = _diverge_then_resume(_tiny("flow_map"), str(tmp_path), "ckpt")
    assert results["steps"] == 4 and np.isfinite(results["energy_distance_K1"])


def test_lfm_diverges_inside_a_block_then_resumes(tmp_path):
    config = _tiny("lfm")
    results = _diverge_then_resume(config, str(tmp_path), os.path.join("blocks", "1", "ckpt"))
    assert [b["steps_trained"] for b in results["blocks"][1:]] == [4, 4]
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["block"], r["block_step"], r["step"]) for r in log] == [
        (1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4), (2, 1, 5), (2, 2, 6), (2, 3, 7),
        (2, 4, 8)]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def interrupted_lfm(tmp_path_factory):
    """A tiny LFM run stopped inside block 2 (after its step-20 checkpoint), then
    finished by the job: (config, workdir, results, block 2's train time before the
    stop)."""
    from lfm_jax.runs import common, lfm_blocks

    config = _tiny("lfm")
    config.lfm.steps_per_block = 40
    config.train.steps_per_call, config.train.checkpoint_every = 10, 20
    workdir = str(tmp_path_factory.mktemp("lfm"))

    def stop(block, step, metrics):
        if block == 2 and step >= 30:
            raise _Stop

    with pytest.raises(_Stop):
        lfm_blocks.train_blocks(config, common.load_data(config), workdir, callback=stop,
                                verbose=False)
    clock = json.load(open(os.path.join(workdir, "blocks", "2", "train_clock.json")))
    assert clock["step"] == 30
    return config, workdir, runs.get("lfm")(config, workdir), clock["train_time_s"]


def test_lfm_steps_and_train_time_add_up_across_restarts(interrupted_lfm):
    config, workdir, results, first_part = interrupted_lfm
    blocks = results["blocks"]
    assert [b["steps_trained"] for b in blocks[1:]] == [40, 40]  # not 20 after resuming
    assert blocks[2]["train_time_s"] >= first_part
    assert results["train_time_s"] >= blocks[1]["train_time_s"] + blocks[2]["train_time_s"]
    # a run that improves every block gives no warning
    assert results["warnings"] == [], results["warnings"]
    assert [b["val_nll"] for b in blocks] == sorted([b["val_nll"] for b in blocks],
                                                    reverse=True)


def _artefacts(workdir, n):
    """{item: value} of block n's artefacts (params as saved, no template needed)."""
    from lfm_jax.runs import block_store

    with block_store.BlockArtefacts(workdir, n, read_only=True) as store:
        raw = store.params()
        report = {k: v for k, v in store.report().items() if not k.endswith("time_s")}
        return {"params": raw, "train_pushed": store.train_pushed(),
                "val_pushed": store.val_pushed((None, None)), "report": report}


def _item_files(workdir, n, item):
    """The version folder of block n's artefacts and the data files of `item` in it
    (orbax's OCDBT data files, d/*, which hold the array bytes; a report's JSON)."""
    art = os.path.join(workdir, "blocks", str(n), "artefacts")
    (version,) = [d for d in os.listdir(art) if d.isdigit()]
    folder = os.path.join(art, version, item)
    if item == "report":
        return os.path.join(art, version), [os.path.join(folder, "metadata")]
    return os.path.join(art, version), [os.path.join(r, f) for r, _, fs in os.walk(folder)
                                        for f in fs if os.path.basename(r) == "d"]


def test_lfm_damaged_block_artefacts_are_rebuilt_with_a_warning(interrupted_lfm):
    """A truncated or garbled file inside a block's artefacts (orbax composite): a
    warning naming the item, the version set aside as <version>.damaged, the item
    recomputed (params: restored from the block's checkpoint) to the same values."""
    import jax

    config, workdir, results, _ = interrupted_lfm
    damaged = [(1, "params", "truncate"), (1, "train_pushed", "garble"),
               (2, "val_pushed", "garble"), (2, "report", "truncate")]
    before = {n: _artefacts(workdir, n) for n in (1, 2)}
    versions = {}
    for n, item, how in damaged:
        versions[n], paths = _item_files(workdir, n, item)
        for path in paths:
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                if how == "truncate":
                    f.truncate(size // 2)
                else:  # flip 8 bytes in the middle: the data may still parse
                    f.seek(size // 2)
                    chunk = f.read(8)
                    f.seek(size // 2)
                    f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.warns(RuntimeWarning) as caught:
        again = runs.get("lfm")(config, workdir)
    messages = "\n".join(str(w.message) for w in caught)
    for n, item, _ in damaged:
        assert os.path.join(versions[n], item) in messages, messages
        assert os.path.isdir(versions[n] + ".damaged")
    for n in (1, 2):  # restored from the checkpoint / recomputed: the same values
        # (the report's timings aside)
        jax.tree_util.tree_map(np.testing.assert_array_equal, _artefacts(workdir, n),
                               before[n])
    assert again["test_nll"] == results["test_nll"]
    assert [b["val_nll"] for b in again["blocks"]] == [b["val_nll"] for b in results["blocks"]]


@pytest.mark.filterwarnings("ignore:overflow encountered")  # chi2 of a broken model
def test_lfm_warns_when_a_block_makes_the_model_worse(tmp_path, monkeypatch):
    """A block whose field is broken on purpose (trained params scaled up) leaves the
    validation NLL worse than before it: the job says so, in the log and metrics.json."""
    import jax

    from lfm_jax.runs import lfm_blocks

    train_one = lfm_blocks._train_one_block

    def broken(*args, **kwargs):
        saved, step = train_one(*args, **kwargs)
        return jax.tree_util.tree_map(lambda p: 5.0 * p, saved), step

    monkeypatch.setattr(lfm_blocks, "_train_one_block", broken)
    config = _tiny("lfm")
    config.lfm.num_blocks, config.lfm.free_last_block = 1, False
    results = runs.get("lfm")(config, str(tmp_path))
    text = " | ".join(results["warnings"])
    assert "block 1 left the validation NLL worse than before it" in text, text
    assert "worse than the base N(0, I)" in text, text
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["warnings"] == results["warnings"]


def test_gaussian_nll_and_worse_than_base():
    from lfm_jax.runs import jobs

    x = np.array([[0.0, 0.0], [1.0, 2.0]])
    assert jobs.gaussian_nll(x) == pytest.approx(np.log(2 * np.pi) + 1.25)
    assert jobs.worse_than_base(1.0, 2.0, "test") == []
    assert "worse than the base" in jobs.worse_than_base(3.0, 2.0, "test")[0]
    assert jobs.worse_than_base(float("nan"), 2.0, "test")


def test_host_placement_is_refused_where_not_supported():
    from configs import flow_map, fm_checkerboard, lfm_checkerboard
    from lfm_jax.runs import validation

    config = flow_map.get_config()
    with config.unlocked():
        config.data.placement = "host"
    with pytest.raises(validation.InvalidConfigError, match="data.placement"):
        validation.validate_config(config)
    config = lfm_checkerboard.get_config()
    config.data.placement = "host"
    validation.validate_config(config)
    fm = fm_checkerboard.get_config()
    with fm.unlocked():
        fm.data.placement = "host"
        fm.data.fresh_samples = True
    with pytest.raises(validation.InvalidConfigError, match="fresh_samples"):
        validation.validate_config(fm)
    fm.data.fresh_samples = False
    validation.validate_config(fm)
    fm.data.placement = "disk"
    with pytest.raises(validation.InvalidConfigError, match="data.placement"):
        validation.validate_config(fm)
