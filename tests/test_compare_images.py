"""experiments.compare_lfm_fm_images: finished runs are skipped, and --seeds gives one
study per seed and the mean / standard error of every number over the seeds (checked
on metrics.json files written here; the runs themselves are the jobs, tested
elsewhere)."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(path, **metrics):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        json.dump(metrics, f)


def test_seeds_table_is_mean_and_standard_error(tmp_path):
    fds = {0: (10.0, 12.0), 1: (14.0, 13.0)}  # (lfm, fm) fd at w = 1 per seed
    for seed, (fd_lfm, fd_fm) in fds.items():
        d = tmp_path / f"seed_{seed}"
        _fake_run(d / "classifier", test_accuracy=0.99)
        _fake_run(d / "lfm", num_params=4, steps=8, test_bpd=1.5 + seed,
                  fd_classifier_w1=fd_lfm, accuracy_w1=0.9)
        _fake_run(d / "fm_paper", num_params=1, steps=8, test_bpd=1.4,
                  fd_classifier_w1=fd_fm, accuracy_w1=0.95)
    out = subprocess.run(
        [sys.executable, "-m", "experiments.compare_lfm_fm_images", "--workdir",
         str(tmp_path), "--seeds", "0,1", "--variant", "", "--runs",
         "classifier,lfm,fm_paper"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "$ " not in out.stdout  # every run was finished: nothing started
    table = json.loads((tmp_path / "compare_images.json").read_text())
    rows = {r["run"]: r for r in table["rows"]}
    assert set(rows) == {"lfm", "fm_paper"} and rows["lfm"]["seeds"] == 2
    np.testing.assert_allclose(rows["lfm"]["fd_classifier_w1"], 12.0)
    np.testing.assert_allclose(rows["lfm"]["fd_classifier_w1_se"], np.std([10, 14], ddof=1) / np.sqrt(2))
    np.testing.assert_allclose(rows["fm_paper"]["fd_classifier_w1"], 12.5)
    np.testing.assert_allclose(rows["lfm"]["test_bpd"], 2.0)
    # each seed's own table too
    per = json.loads((tmp_path / "seed_1" / "compare_images.json").read_text())
    assert [r["run"] for r in per["rows"]] == ["lfm", "fm_paper"]
    assert "--config.seed=1" in " ".join(per["commands"]["lfm"])


def test_equal_time_steps_from_a_timing_run():
    from experiments import timing

    # calls of 50 steps, 0.5 s each after a first call that compiled (10 s)
    records = [{"step": 50 * (i + 1), "time": 100.0 + 10.0 + 0.5 * i} for i in range(10)]
    calib_time = 10.0 + 0.5 * 10  # the run's training time: 500 steps
    steps, per_step, fixed = timing.equal_time_steps(60.0, records, calib_time, 50)
    np.testing.assert_allclose(per_step, 0.01)
    np.testing.assert_allclose(fixed, 15.0 - 500 * 0.01)
    assert steps == 5000 and (fixed + steps * per_step) == 60.0
    assert timing.equal_time_steps(1.0, records, calib_time, 50)[0] == 50  # at least a call
    import pytest

    with pytest.raises(ValueError, match="calibration_steps"):
        timing.equal_time_steps(60.0, records[:2], calib_time, 50)


def test_a_failed_run_makes_the_driver_exit_1_after_the_others(tmp_path):
    """fm_paper's config is invalid (4 x 3 steps, not a multiple of steps_per_call), so
    its job exits with an error before any work; the finished lfm run is still read and
    tabulated, and the driver exits with status 1 naming the failed run (a chained
    script, experiments/run_mnist_study.sh, sees it)."""
    w = tmp_path / "study"
    _fake_run(str(w / "lfm"), num_params=10, steps=12, train_time_s=1.0)
    res = subprocess.run(
        [sys.executable, "-m", "experiments.compare_lfm_fm_images", "--workdir", str(w),
         "--variant", "", "--runs", "lfm,fm_paper", "--steps_per_block", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "failed runs: fm_paper" in res.stderr
    rows = json.load(open(w / "compare_images.json"))["rows"]
    assert [r["run"] for r in rows] == ["lfm", "fm_paper"]
    assert rows[0]["num_params"] == 10 and rows[1]["failed"].startswith("exit status")
