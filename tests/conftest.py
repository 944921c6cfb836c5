"""Test configuration: 4 simulated CPU devices, set before JAX initialises."""
import os

os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Enable float64 for one test (closed-form comparisons) and restore after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def compile_cache_env(tmp_path):
    """Environment entries that give the subprocesses of one test a shared JAX
    persistent compilation cache (every executable written, in tmp_path): a later
    subprocess compiling the same program with the same devices loads it instead.
    What runs is the same executable either way; only the repeated XLA compilation of
    each process is saved."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
