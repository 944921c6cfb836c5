"""Flow maps on images (CPU, tiny U-Nets, sklearn's 8x8 digits, a handful of steps):
the flow-map job with LSD and PSD writes samples_k{1,2,4}.npz and timings; a tiny
class-conditional digits LFM distilled into U-Net flow maps, compared with its ODE
generation per K; the sample scoring hook."""

import json
import os
import types

import numpy as np
import pytest

from lfm_jax import runs


def _tiny_flow_map(objective, kind="unet"):
    """configs/flow_map_digits.py shrunk; kind "mlp" swaps the U-Net for a small MLP
    (seconds to compile on a CPU, where the U-Net's jvp takes a minute)."""
    from configs import flow_map_digits

    config = flow_map_digits.get_config(objective)
    config.model.kind, config.model.unet_channels = kind, 8
    config.model.hidden, config.model.num_frequencies = (32, 32), 2
    t = config.train
    t.steps, t.batch_size, t.steps_per_call, t.num_devices, t.warmup_steps = 4, 16, 2, 1, 0
    config.eval.n_samples, config.eval.chunk_size = 12, 8
    config.flow_map.sample_steps = (1, 2, 4)
    config.log.tensorboard = False
    return config


@pytest.mark.parametrize("objective,kind", [
    ("lsd", "mlp"), ("psd", "mlp"),
    pytest.param("lsd", "unet", marks=pytest.mark.slow),  # ~1.5 min on a shared CPU
    pytest.param("psd", "unet", marks=pytest.mark.slow)])
def test_flow_map_job_on_digits(objective, kind, tmp_path):
    """The job trains the flow map (the two-time U-Net of the config, or a small MLP)
    on digits, and per K writes uint8 samples (npz), a grid and a sampling time; no
    2-D metrics."""
    r = runs.get("flow_map")(_tiny_flow_map(objective, kind), str(tmp_path), argv=[])
    assert r["objective"] == objective and r["steps"] == 4
    rows = json.loads((tmp_path / "metrics.json").read_text())["sampling"]
    assert [row["steps"] for row in rows] == [1, 2, 4]
    for row in rows:
        k = row["steps"]
        assert row["time_s"] > 0 and row["n_samples_failed"] == 0
        assert "energy_distance" not in row and r[f"time_s_K{k}"] == row["time_s"]
        with np.load(tmp_path / f"samples_k{k}.npz") as f:
            assert f["images"].dtype == np.uint8 and f["images"].shape == (12, 8, 8, 1)
            assert "labels" not in f
        assert os.path.exists(tmp_path / f"samples_k{k}.png")


def test_flow_map_digits_config_variants():
    from configs import flow_map_digits

    c = flow_map_digits.get_config("psd,mnist")
    assert c.method == "flow_map" and c.flow_map.objective == "psd"
    assert c.data.name == "mnist" and c.model.unet_preset == "mnist"
    assert c.model.kind == "unet" and c.model.num_classes == 0
    assert flow_map_digits.get_config("mnist").flow_map.objective == "lsd"
    with pytest.raises(ValueError, match="variant"):
        flow_map_digits.get_config("lsd,cifar")


def test_sample_scorer_is_optional(monkeypatch, tmp_path):
    """Without eval.classifier_workdir (and inception_weights) no scorer; with it, the
    samples (finite rows only, their labels) and the bound reference go to
    classifier_eval.score, and the dropped rows are counted."""
    from lfm_jax.runs import image_eval

    config = _tiny_flow_map("lsd")
    reference = np.ones((5, 8, 8, 1))
    assert image_eval.sample_scorer(config, reference) is None
    calls = []
    fake = types.SimpleNamespace(
        load=lambda w, shape=None: ("clf", {"w": w, "shape": shape}),
        score=lambda c, p, s, ref, labels=None: calls.append((c, p, s, ref, labels))
        or {"fd_classifier": 1.5, "notes": {"fd_classifier": "not FID"}})
    monkeypatch.setattr(image_eval, "classifier_eval", fake)
    with config.unlocked():
        config.eval.classifier_workdir = str(tmp_path)
    score = image_eval.sample_scorer(config, reference, (8, 8, 1))
    samples = np.zeros((3, 8, 8, 1))
    samples[1] = np.nan
    assert score(samples, labels=np.arange(3)) == {
        "fd_classifier": 1.5, "n_scored": 2, "n_dropped": 1,
        "notes": {"fd_classifier": "not FID"}}
    (_, p, s, ref, labels), = calls
    assert p == {"w": str(tmp_path), "shape": (8, 8, 1)} and len(s) == 2
    assert list(labels) == [0, 2] and ref is reference


def tiny_digits_lfm_config(variant: str = "", kind: str = "mlp"):
    """configs/lfm_digits.py[:variant] shrunk to 2 blocks of 2 steps (MLP 32x32, or a
    U-Net of 8 base channels): seconds on a CPU."""
    from configs import lfm_digits

    config = lfm_digits.get_config(variant)
    config.model.kind, config.model.unet_channels = kind, 8
    config.model.hidden, config.model.num_frequencies = (32, 32), 2
    t = config.train
    t.batch_size, t.steps_per_call, t.num_devices, t.warmup_steps = 16, 2, 1, 0
    c = config.lfm
    c.num_blocks, c.steps_per_block, c.n_val, c.chunk_size = 2, 2, 8, 512
    c.push_ode.solver, c.push_ode.num_steps = "euler", 1
    config.eval.ode.solver, config.eval.ode.num_steps = "heun", 2
    config.eval.chunk_size = 8
    config.log.tensorboard = False
    return config


@pytest.mark.parametrize("kind", [
    "mlp", pytest.param("unet", marks=pytest.mark.slow)])  # U-Net: ~3 min on a CPU
def test_distill_digits_lfm_into_flow_maps(kind, tmp_path):
    """A tiny class-conditional digits LFM (2 blocks, a few steps each) distilled into
    unconditional flow maps (U-Nets of the LFM's preset, or MLPs; null-class
    teacher); per K the distilled and Euler generations are timed, compared with the
    ODE samples of the same noise and saved."""
    from lfm_jax.runs import common, distill_eval, lfm_blocks, lfm_distill

    config = tiny_digits_lfm_config(kind=kind)
    dataset = common.load_data(config)
    workdir = str(tmp_path / "lfm")
    lfm_blocks.train_blocks(config, dataset, workdir, verbose=False)
    network, model, params_list = lfm_distill.load_trained_blocks(
        config, workdir, dataset.example_shape)
    out = str(tmp_path / "distill")
    maps, infos = lfm_distill.distill_blocks(
        config, workdir, network, model, params_list, dataset.train, out_dir=out,
        objective="lmd", hidden=(32, 32), steps=2, batch_size=8, max_pairs=64,
        verbose=False)
    assert [i["block"] for i in infos] == [1, 2]
    assert maps[0][0] is maps[1][0]
    assert getattr(maps[0][0].network, "num_classes", None) is None
    rows = distill_eval.compare(config, model, params_list, maps, dataset, out,
                                sample_steps=(1, 2, 4), n_samples=10)
    assert [(r["method"], r["K"]) for r in rows[1:]] == [
        (m, k) for k in (1, 2, 4) for m in ("distilled", "lfm_euler")]
    assert rows[0]["method"] == "lfm_ode" and rows[0]["mse_to_ode"] == 0
    for r in rows:
        assert r["time_s"] > 0 and np.isfinite(r["mse_to_ode"]) and r["n_failed"] == 0
        name = r["method"] if r["method"] == "lfm_ode" else f"{r['method']}_k{r['K']}"
        with np.load(os.path.join(out, f"samples_{name}.npz")) as f:
            assert f["images"].dtype == np.uint8 and f["images"].shape == (10, 8, 8, 1)
        assert os.path.exists(os.path.join(out, f"samples_{name}.png"))
    assert rows[1]["network_calls"] == 2 and rows[-1]["network_calls"] == 8
    assert "MSE to ODE samples" in distill_eval.table(rows)
