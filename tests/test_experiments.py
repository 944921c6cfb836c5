"""Smoke tests of the command-line entry point and of config validation."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.train.steps=40", "--config.train.steps_per_call=10",
        "--config.train.checkpoint_every=20", "--config.train.batch_size=64",
        "--config.model.hidden=(32,32)", "--config.data.n_train=2000",
        "--config.data.n_test=400", "--config.eval.n_samples=400",
        "--config.eval.nll_examples=100", "--config.eval.ode.rtol=1e-3",
        "--config.eval.ode.atol=1e-3"]


def _train(workdir, *extra, config="configs/fm_checkerboard.py"):
    cmd = [sys.executable, "-m", "experiments.train", f"--config={config}",
           f"--workdir={workdir}", *TINY, *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_train_smoke_and_resume(tmp_path):
    wd = tmp_path / "run"
    proc = _train(wd, "--config.train.steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # same workdir, more steps: resumes from the step-20 checkpoint
    proc = _train(wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 20" in proc.stdout
    results = json.loads((wd / "metrics.json").read_text())
    assert results["steps"] == 40
    for key in ("test_nll", "nll_floor", "energy_distance", "mmd", "sliced_w2"):
        assert key in results and results[key] == results[key]  # present, not NaN
    assert abs(results["nll_floor"] - 3.676) < 1e-3
    assert (wd / "samples.png").stat().st_size > 1000
    steps = [json.loads(l)["step"] for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # each step logged once across the restart
    # (that a resumed run equals an uninterrupted one, bit for bit, is checked in
    # process by test_train.test_kill_and_resume_is_exact and, through a killed
    # subprocess, by test_trust.test_kill9_during_checkpoint_save_...)


def test_unknown_config_key_is_rejected(tmp_path):
    proc = _train(tmp_path / "x", "--config.train.stepz=3")
    assert proc.returncode != 0
    assert "stepz" in proc.stderr


def test_unknown_key_in_config_file_is_rejected():
    from configs import fm_checkerboard

    config = fm_checkerboard.get_config()
    with pytest.raises(AttributeError, match="lr_typo"):
        config.train.lr_typo = 1.0


def test_missing_config_file(tmp_path):
    proc = _train(tmp_path / "x", config="configs/does_not_exist.py")
    assert proc.returncode != 0
    assert "does_not_exist" in proc.stderr


@pytest.mark.slow  # the flow-map job runs in process in test_jobs (CI); this is the CLI
def test_flow_map_job_smoke(tmp_path):
    wd = tmp_path / "fmap"
    proc = _train(wd, "--config.train.steps=20", "--config.flow_map.sample_steps=(1,2)",
                  config="configs/flow_map.py:lsd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((wd / "metrics.json").read_text())
    assert results["objective"] == "lsd"
    assert [r["steps"] for r in results["sampling"]] == [1, 2]
    assert all(r["energy_distance"] == r["energy_distance"] for r in results["sampling"])
    assert (wd / "samples.png").exists()
