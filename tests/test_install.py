"""Installable layout: config names resolve to the shipped configs; setup.cfg ships them.

(A real non-editable `pip install .` into a fresh venv is too slow for CI; these tests
check the pieces it relies on.)
"""

import configparser
import os
import pathlib
import subprocess
import sys

import pytest
import setuptools

from experiments import config_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def test_resolve_paths_names_and_args(tmp_path, monkeypatch):
    assert config_path.configs_dir() == pathlib.Path(CONFIGS)
    monkeypatch.chdir(ROOT)
    assert config_path.resolve("configs/fm_checkerboard.py") == "configs/fm_checkerboard.py"
    assert config_path.resolve("configs/fm_checkerboard.py:x") == "configs/fm_checkerboard.py:x"
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative path no longer exists
    shipped = os.path.join(CONFIGS, "lfm_checkerboard.py")
    assert config_path.resolve("lfm_checkerboard") == shipped
    assert config_path.resolve("lfm_checkerboard:a:b") == shipped + ":a:b"
    assert config_path.resolve("configs/lfm_checkerboard.py") == shipped
    own = tmp_path / "lfm_checkerboard.py"  # a file of the user's wins over the name
    own.write_text("def get_config():\n    return None\n")
    assert config_path.resolve("lfm_checkerboard.py") == "lfm_checkerboard.py"
    with pytest.raises(FileNotFoundError, match="no config named 'lfm_checkerbord'.*"
                                                 "fm_checkerboard"):
        config_path.resolve("lfm_checkerbord")
    with pytest.raises(FileNotFoundError, match="empty"):
        config_path.resolve(":x")
    names = config_path.available()
    assert {"fm_checkerboard", "lfm_checkerboard", "lfm_power"} <= set(names)
    assert "__init__" not in names


def test_resolve_argv_rewrites_only_the_config_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = os.path.join(CONFIGS, "fm_checkerboard.py")
    argv = ["train.py", "--config", "fm_checkerboard", "--config.train.lr=1",
            "--workdir", "w"]
    assert config_path.resolve_argv(argv) == [
        "train.py", "--config", shipped, "--config.train.lr=1", "--workdir", "w"]
    assert config_path.resolve_argv(["t", "--config=fm_checkerboard:3"]) == [
        "t", f"--config={shipped}:3"]


def test_train_resolves_a_name_from_another_directory(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = lambda *a: subprocess.run([sys.executable, "-m", "experiments.train", *a],
                                    cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=120)
    # the config is found by name and loaded: its override check rejects a bad key
    proc = run("--config", "fm_checkerboard", "--workdir", "w", "--config.train.stepz=1")
    assert proc.returncode != 0 and "stepz" in proc.stderr
    assert "no config named" not in proc.stderr
    proc = run("--config", "fm_checkerbord", "--workdir", "w")
    assert proc.returncode != 0 and "no config named 'fm_checkerbord'" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_setup_cfg_ships_configs_and_experiments():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["options"]["packages"].strip() == "find:"
    include = cfg["options.packages.find"]["include"].split()
    found = set(setuptools.find_packages(ROOT, include=include))
    assert {"lfm_jax", "lfm_jax.runs", "configs", "experiments"} <= found
    assert not any(p == "tests" or p.startswith("tests.") for p in found)
    requires = cfg["options"]["install_requires"].split()
    assert any(r.lower().startswith("tensorboardx") for r in requires)
