"""experiments/sweep.py: parsing, expansion, names, summary, print mode, one real sweep."""

import csv
import json
import math
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    from configs import fm_checkerboard

    return fm_checkerboard.get_config()


def _sweep(*args, timeout=600):
    # the runs use one CPU device (conftest's 4 simulated devices only slow compiles)
    env = dict(os.environ, XLA_FLAGS=" ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f))
    cmd = [sys.executable, "-m", "experiments.sweep", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_split_top_level_keeps_tuples_and_quoted_commas():
    assert sweep.split_top_level("(256,256),(512, 512)") == ["(256,256)", "(512, 512)"]
    assert sweep.split_top_level("1e-3, 3e-4") == ["1e-3", "3e-4"]
    assert sweep.split_top_level("'a,b',[1,(2,3)],{'k': (4,5)}") == [
        "'a,b'", "[1,(2,3)]", "{'k': (4,5)}"]
    for bad in ("(1,2", "1,2)", "[1,2)", "'a,b"):
        with pytest.raises(ValueError):
            sweep.split_top_level(bad)


def test_parse_assignment():
    assert sweep.parse_assignment("train.lr=1e-3,3e-4") == ("train.lr", ["1e-3", "3e-4"])
    assert sweep.parse_assignment("config.model.hidden=(1,2)") == ("model.hidden", ["(1,2)"])
    assert sweep.parse_assignment("data.name=a,b", multi=False) == ("data.name", ["a,b"])
    for bad in ("train.lr", "=1", "train.lr=1,,2", "train.lr=1,1", "a b=1"):
        with pytest.raises(ValueError):
            sweep.parse_assignment(bad)


def test_parse_value_uses_the_field_type_like_ml_collections():
    config = _config()
    assert sweep.parse_value(config, "train.lr", "1e-3") == 0.001
    assert sweep.parse_value(config, "train.lr", "3") == 3.0  # float field
    assert sweep.parse_value(config, "model.hidden", "(512, 512)") == (512, 512)
    assert sweep.parse_value(config, "eval.use_ema", "false") is False
    assert sweep.parse_value(config, "data.name", "moons") == "moons"
    with pytest.raises(ValueError, match="train.steps"):
        sweep.parse_value(config, "train.steps", "1.5")
    with pytest.raises(KeyError, match="train.lrr"):
        sweep.parse_value(config, "train.lrr", "1")


def test_expand_product_names_and_order():
    runs = sweep.expand(["train.lr=1e-3,3e-4", "model.hidden=(256,256),(512,512)"], seeds=3,
                        fixed=["train.steps=20"], config=_config())
    assert len(runs) == 12
    assert runs[0].name == "train.lr=0.001__model.hidden=256-256__seed=0"
    assert runs[-1].name == "train.lr=0.0003__model.hidden=512-512__seed=2"
    assert len({r.name for r in runs}) == 12
    assert runs[1].overrides == (("train.lr", "1e-3"), ("model.hidden", "(256,256)"),
                                 ("seed", "1"))
    assert runs[0].group == runs[2].group != runs[3].group
    assert runs[4].group_values == (("train.lr", 0.001), ("model.hidden", (512, 512)))
    # a seed axis given as a sweep goes last in the names too
    runs = sweep.expand(["seed=0,1", "train.lr=1e-3"], config=_config())
    assert [r.name for r in runs] == ["train.lr=0.001__seed=0", "train.lr=0.001__seed=1"]
    # names are filesystem-safe and deterministic; overly long ones are cut with a hash
    assert sweep.format_value("a/b c") == "a_b_c"
    assert sweep.format_value(True) == "true"
    long = sweep.run_name(["data.path"], ["x" * 500])
    assert len(long) <= sweep.MAX_NAME and long == sweep.run_name(["data.path"], ["x" * 500])
    assert long != sweep.run_name(["data.path"], ["x" * 499])


def test_expand_rejects_bad_sweeps_before_running():
    config = _config()
    with pytest.raises(KeyError, match="train.lrr"):
        sweep.expand(["train.lrr=1,2"], config=config)
    with pytest.raises(ValueError, match="model.hidden"):
        sweep.expand(["model.hidden=(1,2),(3"], config=config)
    with pytest.raises(ValueError, match="train.steps"):
        sweep.expand(["train.lr=1e-3"], fixed=["train.steps=ten"], config=config)
    with pytest.raises(ValueError, match="more than once"):
        sweep.expand(["seed=0,1"], seeds=2, config=config)
    with pytest.raises(ValueError, match="more than once"):
        sweep.expand(["train.lr=1,2"], fixed=["train.lr=3"], config=config)
    with pytest.raises(ValueError, match="same run name"):
        sweep.expand(["data.name=a/b,a_b"], config=config)


def test_command_passes_fixed_then_swept_overrides():
    (run, _) = sweep.expand(["model.hidden=(8,8),(4,4)"], config=_config())
    argv = sweep.command(run, "c.py", "runs/S", fixed=["train.steps=3"], python="python")
    assert argv == ["python", "-m", "experiments.train", "--config", "c.py", "--workdir",
                    os.path.join("runs/S", "model.hidden=8-8"), "--config.train.steps=3",
                    "--config.model.hidden=(8,8)"]


def _write(path, obj):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def test_summary_mean_and_stderr_over_seeds(tmp_path):
    runs = sweep.expand(["train.lr=1e-3,3e-4"], seeds=3, config=_config())
    rng = np.random.default_rng(0)
    values = {}
    for run in runs:
        lr, seed = run.values
        if lr == 3e-4 and seed == 2:
            _write(tmp_path / run.name, "{ truncated")  # unreadable: not finished
            continue
        nll, ed = rng.normal(3.0, 0.5), rng.uniform()
        values.setdefault(lr, []).append((nll, ed))
        _write(tmp_path / run.name, {"test_nll": nll, "energy_distance": ed, "steps": 20,
                                     "method": "fm", "converged": True, "per_block": [1, 2],
                                     "block": {"nll": nll + 1}})
    assert not sweep.is_finished(str(tmp_path / runs[-1].name))
    summary = sweep.summarize(runs, str(tmp_path))
    assert summary["keys"] == ["train.lr"]
    assert summary["metrics"] == ["block.nll", "energy_distance", "steps", "test_nll"]
    md, csv_path = sweep.write_summary(summary, str(tmp_path))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["train.lr"] for r in rows] == ["0.001", "0.0003"]
    for row, lr in zip(rows, (1e-3, 3e-4)):
        nll = np.array([v[0] for v in values[lr]])
        ed = np.array([v[1] for v in values[lr]])
        assert int(row["n"]) == len(nll) and int(row["total"]) == 3
        for name, x in (("test_nll", nll), ("energy_distance", ed), ("block.nll", nll + 1)):
            assert float(row[f"{name}_mean"]) == pytest.approx(np.mean(x), rel=1e-12)
            se = np.std(x, ddof=1) / np.sqrt(len(x))
            assert float(row[f"{name}_stderr"]) == pytest.approx(se, rel=1e-12)
        assert float(row["steps_stderr"]) == 0.0
    text = open(md).read().splitlines()
    assert text[0].startswith("| train.lr | n | block.nll |") and len(text) == 4
    assert "| 0.0003 | 2/3 |" in text[3] and " ± " in text[3]
    # one seed: the mean is the value, the standard error is left empty
    one = sweep.summarize(runs[:1], str(tmp_path), metrics=["test_nll"])
    mean, se, count = one["rows"][0]["stats"]["test_nll"]
    assert mean == values[1e-3][0][0] and math.isnan(se) and count == 1


def test_print_commands_skips_finished_runs(tmp_path):
    sweep_dir = tmp_path / "S"
    _write(sweep_dir / "train.lr=0.001__model.hidden=8-8", {"test_nll": 1.0})
    proc = _sweep("--config", "fm_checkerboard", "--workdir", str(sweep_dir),
                  "--sweep", "train.lr=1e-3,3e-4", "--sweep", "model.hidden=(8,8),(16, 16)",
                  "--set", "train.steps=5", "--print_commands", "--python", "python")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and "4 runs, 1 finished" in proc.stderr
    argv = shlex.split(lines[-1])
    assert argv[:3] == ["python", "-m", "experiments.train"]
    assert argv[argv.index("--workdir") + 1] == str(
        sweep_dir / "train.lr=0.0003__model.hidden=16-16")
    assert argv[-3:] == ["--config.train.steps=5", "--config.train.lr=3e-4",
                         "--config.model.hidden=(16, 16)"]
    assert os.path.isfile(argv[argv.index("--config") + 1])
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(manifest["runs"]) == 4 and not (sweep_dir / "summary.md").exists()
    # a bad key fails before any run, naming the key
    proc = _sweep("--config", "fm_checkerboard", "--workdir", str(sweep_dir),
                  "--sweep", "train.lrr=1", "--print_commands")
    assert proc.returncode != 0 and "train.lrr" in proc.stderr


@pytest.mark.slow  # 4 fresh job processes; the expansion and summary have unit tests
def test_real_tiny_sweep_runs_skips_and_summarises(tmp_path):
    sweep_dir = tmp_path / "S"
    args = ["--config", "configs/fm_checkerboard.py", "--workdir", str(sweep_dir),
            "--sweep", "train.lr=1e-3,3e-4",
            "--set", "train.steps=20", "--set", "train.steps_per_call=10",
            "--set", "train.batch_size=64", "--set", "model.hidden=(32,32)",
            "--set", "data.n_train=1000", "--set", "data.n_val=100",
            "--set", "data.n_test=200", "--set", "eval.n_samples=200",
            "--set", "eval.nll_examples=50"]
    proc = _sweep(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["train.lr"] for r in rows] == ["0.001", "0.0003"]
    for row in rows:
        assert row["n"] == "1" and math.isfinite(float(row["test_nll_mean"]))
        assert row["steps_mean"] == "20.0" and row["test_nll_stderr"] == ""
    for name in ("train.lr=0.001", "train.lr=0.0003"):
        assert json.loads((sweep_dir / name / "metrics.json").read_text())["steps"] == 20
        assert "--config.train.lr=" in (sweep_dir / name / "train.log").read_text()
    # the same command again: both runs are finished and skipped, the summary rewritten
    os.remove(sweep_dir / "summary.md")
    proc = _sweep(*args, timeout=60)
    assert proc.returncode == 0 and "2 runs, 2 finished (skipped)" in proc.stdout
    assert "starting" not in proc.stdout and (sweep_dir / "summary.md").exists()
