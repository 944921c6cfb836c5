"""JAX's persistent compilation cache, switched on by one call.

XLA compilation of a train step or an ODE solve takes seconds; with the persistent
cache a second run (or a resumed one) of the same program on the same device and JAX
version loads the compiled executable from disk instead. `enable()` points JAX's cache
(`jax_compilation_cache_dir`) at a directory and sets the thresholds below which an
executable is not written. Call it once at the start of a program, before the first
compilation; a later call re-targets the cache (it resets JAX's cache object, so the
next compilation opens the new directory).

Where the cache lives, in order of precedence:
1. the environment variable `LFM_JAX_CACHE_DIR` (`ENV_VAR`), if set: a path, or one of
   `DISABLE_VALUES` ("off", "0", "none", "false", "") to switch the cache off;
2. the `cache_dir` argument, if given;
3. `default_cache_dir()`: `$XDG_CACHE_HOME/lfm_jax/jax_cache`, or
   `~/.cache/lfm_jax/jax_cache` when XDG_CACHE_HOME is unset.
The variable wins over the argument so that a user can redirect or disable the cache of
any script without editing it.

JAX keys each entry by the program, the compile options, the device kind and the JAX /
jaxlib versions, so one directory can serve several machines and versions. JAX treats
the cache as trusted code: do not point it at a directory others can write to.
"""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

ENV_VAR = "LFM_JAX_CACHE_DIR"
"""Environment variable overriding the cache directory (or disabling the cache)."""

DISABLE_VALUES = ("", "0", "off", "none", "false")
"""Values of `ENV_VAR` (case-insensitive) that switch the cache off."""


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/lfm_jax/jax_cache, else ~/.cache/lfm_jax/jax_cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".cache")
    return os.path.join(base, "lfm_jax", "jax_cache")


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> str | None:
    """The directory `enable(cache_dir)` would use, or None if the cache is disabled.

    Precedence: `ENV_VAR` (a path, or a value in DISABLE_VALUES = off), then
    `cache_dir`, then `default_cache_dir()`. The path is returned absolute, `~` expanded.
    """
    env = os.environ.get(ENV_VAR)
    if env is not None:
        if env.strip().lower() in DISABLE_VALUES:
            return None
        path = env
    elif cache_dir is not None:
        path = os.fspath(cache_dir)
    else:
        path = default_cache_dir()
    return os.path.abspath(os.path.expanduser(path))


def enable(cache_dir: str | os.PathLike | None = None, *,
           min_compile_time_secs: float = 0.2,
           min_entry_size_bytes: int = 0) -> str | None:
    """Turn on JAX's persistent compilation cache; returns its directory (None: off).

    cache_dir: see `resolve_cache_dir` (the environment variable `LFM_JAX_CACHE_DIR`
      takes precedence). The directory is created if missing.
    min_compile_time_secs: executables that compiled faster than this are not written
      (JAX's default is 1 s; 0.2 s keeps the ODE solves and small train steps that
      compile in under a second on a CPU, and skips the many tiny eager-op programs).
    min_entry_size_bytes: executables smaller than this are not written (0: JAX's
      default, which lets JAX pick a minimum suited to the file system; -1: none).

    When disabled (by the environment variable) nothing is changed and None is
    returned, so a cache enabled earlier in the process stays as it was.
    """
    if min_compile_time_secs < 0:
        raise ValueError(f"min_compile_time_secs must be >= 0, got {min_compile_time_secs}")
    if min_entry_size_bytes < -1:
        raise ValueError(f"min_entry_size_bytes must be >= -1, got {min_entry_size_bytes}")
    path = resolve_cache_dir(cache_dir)
    if path is None:
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    # JAX opens its cache once, at the first compilation; resetting makes a call made
    # after that (or a second call with another directory) take effect.
    _jax_cache.reset_cache()
    return path
