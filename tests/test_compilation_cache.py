"""lfm_jax.compilation_cache: directory resolution, and a second process hits the cache."""

import json
import os
import subprocess
import sys

import pytest

from lfm_jax import compilation_cache

# Compiles one function under `enable()` and reports the persistent-cache events.
CHILD = r"""
import json, sys
import jax, jax.numpy as jnp
from lfm_jax import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = compilation_cache.enable(min_compile_time_secs=0.0, min_entry_size_bytes=-1)

@jax.jit
def f(x):
    for _ in range(3):
        x = jnp.sin(x) @ x.T + 1.0
    return x.sum()

f(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"path": path,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run_child(env):
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=120, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, compilation_cache.ENV_VAR: str(cache), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    first = _run_child(env)
    assert first["path"] == str(cache)
    assert first["misses"] >= 1 and first["hits"] == 0
    entries = sorted(os.listdir(cache))
    assert entries, "the first process wrote nothing to the cache"
    second = _run_child(env)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert sorted(os.listdir(cache)) == entries


def test_directory_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_cache_dir() == str(tmp_path / "xdg" / "lfm_jax"
                                                        / "jax_cache")
    assert compilation_cache.resolve_cache_dir() == compilation_cache.default_cache_dir()
    assert compilation_cache.resolve_cache_dir(tmp_path / "arg") == str(tmp_path / "arg")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.default_cache_dir() == str(tmp_path / "home" / ".cache"
                                                        / "lfm_jax" / "jax_cache")
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
    assert compilation_cache.resolve_cache_dir(tmp_path / "arg") == str(tmp_path / "env")


@pytest.mark.parametrize("value", ["off", "0", "None", ""])
def test_env_var_disables_without_touching_jax(monkeypatch, tmp_path, value):
    import jax

    monkeypatch.setenv(compilation_cache.ENV_VAR, value)
    before = jax.config.jax_compilation_cache_dir
    assert compilation_cache.enable(tmp_path / "unused") is None
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "unused").exists()


def test_bad_thresholds_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path))
    with pytest.raises(ValueError, match="min_compile_time_secs"):
        compilation_cache.enable(min_compile_time_secs=-1.0)
    with pytest.raises(ValueError, match="min_entry_size_bytes"):
        compilation_cache.enable(min_entry_size_bytes=-2)
