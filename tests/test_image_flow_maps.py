"""Flow maps on images (CPU, tiny U-Nets, sklearn's 8x8 digits, a handful of steps):
the flow-map job with LSD and PSD writes samples_k{1,2,4}.npz and timings; a tiny
class-conditional digits LFM distilled into U-Net flow maps, compared with its ODE
generation per K; the classifier scoring hook."""

import json
import os
import sys
import types

import numpy as np
import pytest

from lfm_jax import runs


def _tiny_flow_map(objective):
    from configs import flow_map_digits

    config = flow_map_digits.get_config(objective)
    config.model.unet_channels = 8
    t = config.train
    t.steps, t.batch_size, t.steps_per_call, t.num_devices, t.warmup_steps = 4, 16, 2, 1, 0
    config.eval.n_samples, config.eval.chunk_size = 12, 8
    config.flow_map.sample_steps = (1, 2, 4)
    config.log.tensorboard = False
    return config


@pytest.mark.parametrize("objective", ["lsd", "psd"])
def test_flow_map_job_on_digits(objective, tmp_path):
    """The job trains the two-time U-Net, and per K writes uint8 samples (npz), a grid
    and a sampling time; no 2-D metrics."""
    r = runs.get("flow_map")(_tiny_flow_map(objective), str(tmp_path), argv=[])
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


def test_classifier_scorer_is_optional(monkeypatch, tmp_path):
    """Without eval.classifier_workdir nothing is imported; with it, the samples
    (finite rows only) and reference go to classifier_eval.score."""
    from lfm_jax.runs import image_eval

    config = _tiny_flow_map("lsd")
    assert image_eval.classifier_scorer(config) is None
    calls = []
    fake = types.SimpleNamespace(
        load=lambda w: ("clf", {"w": w}),
        score=lambda c, p, s, ref, labels=None: calls.append((c, p, s, ref, labels))
        or {"fd_classifier": 1.5})
    monkeypatch.setitem(sys.modules, "lfm_jax.runs.classifier_eval", fake)
    monkeypatch.setattr(runs, "classifier_eval", fake, raising=False)
    with config.unlocked():
        config.eval.classifier_workdir = str(tmp_path)
    score = image_eval.classifier_scorer(config)
    samples = np.zeros((3, 8, 8, 1))
    samples[1] = np.nan
    assert score(samples, np.ones((5, 8, 8, 1)), labels=np.arange(3)) == {
        "fd_classifier": 1.5}
    (_, p, s, _, labels), = calls
    assert p == {"w": str(tmp_path)} and len(s) == 2 and list(labels) == [0, 2]
