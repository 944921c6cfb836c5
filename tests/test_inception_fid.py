"""Standard (Inception) FID (`lfm_jax.inception_fid`), the parts that need no torch:
errors that name the problem (missing weights file, pytorch-fid not installed, bad
images), the check before training, and the jobs' wiring with the Inception scorer
stubbed. The network itself (features and distance against pytorch-fid's own, loading
without network, the FM job and score_samples end to end) is tested in
test_inception_fid_torch.py (marker `fid`: `pip install -e .[fid]`, then
`pytest -m fid`).
"""

import json
import os
import sys

import numpy as np
import pytest

from lfm_jax import inception_fid
from lfm_jax.runs import image_eval, validation


@pytest.fixture
def weights_file(tmp_path, monkeypatch):
    """An existing (empty) weights file, with torch / pytorch-fid taken as installed:
    the config check passes and the stubbed scorer never reads it."""
    monkeypatch.setattr(inception_fid, "_modules", lambda: (None, None, None))
    path = tmp_path / inception_fid.WEIGHTS_FILE
    path.write_bytes(b"")
    return str(path)


def test_errors_name_the_problem(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere" / inception_fid.WEIGHTS_FILE)
    with pytest.raises(FileNotFoundError, match="nowhere") as e:
        inception_fid.check_weights(missing)
    assert missing in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        inception_fid.features(np.zeros((2, 8, 8, 1)), missing)
    x = np.zeros((2, 8, 8, 1), np.float32)
    for bad, what in ((x[0], "shape"), (np.zeros((2, 8, 8, 2)), "C = 1 or 3"),
                      (x[:0], "no rows")):
        with pytest.raises(ValueError, match=what):
            inception_fid.as_network_input(bad)
    x[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="1 of 2 rows hold NaN"):
        inception_fid.as_network_input(x)
    present = tmp_path / "weights.pth"
    present.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # not installed
    with pytest.raises(ImportError, match="pip install pytorch-fid") as e:
        inception_fid.check_weights(str(present))
    assert "download.pytorch.org/whl/cpu" in str(e.value)


def _tiny_fm():
    from tests.test_image_jobs import _tiny

    config = _tiny("fm")
    config.data.n_test = 2  # the reference images: Inception costs ~1 s an image
    config.eval.fd_samples, config.eval.guidance_ws = 2, (0.0, 2.0)
    return config


def test_missing_weights_refused_before_training(tmp_path):
    """config.eval.inception_weights naming no file: FileNotFoundError naming the key
    and the path from the config check, before the job writes anything."""
    config = _tiny_fm()
    missing = str(tmp_path / "pt_inception.pth")
    config.eval.inception_weights = missing
    with pytest.raises(FileNotFoundError, match="config.eval.inception_weights") as e:
        validation.validate_config(config)
    assert missing in str(e.value)
    from lfm_jax import runs

    with pytest.raises(FileNotFoundError, match="pt_inception.pth"):
        runs.get("fm")(config, str(tmp_path / "run"), argv=[])
    assert not os.path.exists(tmp_path / "run" / "config.json")


def test_flow_map_job_reports_fid_inception_per_k(weights_file, tmp_path, monkeypatch):
    """The flow-map digits job (a small MLP) with eval.inception_weights: fid_inception
    per K in its sampling rows and summary (fid_inception_K<K>), the note once in
    metrics.json. (inception_fid.scorer stubbed: the wiring is what is tested; the
    real network: test_inception_fid_torch.py.)"""
    weights = weights_file
    from lfm_jax import runs
    from tests.test_image_flow_maps import _tiny_flow_map

    seen = []
    monkeypatch.setattr(inception_fid, "scorer", lambda reference, w: seen.append(
        (len(reference), w)) or (lambda x: 0.5 + len(x)))
    config = _tiny_flow_map("psd", "mlp")
    config.flow_map.sample_steps = (1, 2)
    config.eval.inception_weights = weights
    r = runs.get("flow_map")(config, str(tmp_path), argv=[])
    assert seen == [(config.data.n_test, weights)]  # built once, for the test images
    assert r["fid_inception_K1"] == r["fid_inception_K2"] == 12.5
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["fid_inception"] for row in m["sampling"]] == [12.5, 12.5]
    assert all("notes" not in row for row in m["sampling"])
    assert "12 samples" in m["notes"]["fid_inception"]


def test_sample_scorer_is_optional():
    """Neither source set: no scorer and no scores (nothing imported or loaded)."""
    config = _tiny_fm()
    assert image_eval.sample_scorer(config, np.zeros((2, 8, 8, 1))) is None
    results = {}
    assert image_eval.sample_scores(results, config, None, None, None, None, "") == {}
