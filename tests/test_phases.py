"""PhaseClock: phases add up, compilation is attributed to the phase that compiles."""

import time

import jax
import jax.numpy as jnp
import pytest

from lfm_jax import phases


def test_phases_add_up_and_compilation_lands_in_its_phase():
    clock = phases.PhaseClock()
    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())
    x = jnp.arange(7.0)
    with clock.phase("compile and run"):
        f(x).block_until_ready()
    with clock.phase("run again"):
        for _ in range(3):
            f(x).block_until_ready()
    with clock.phase("sleep"):
        time.sleep(0.05)
    with clock.phase("sleep"):
        time.sleep(0.05)
    d = clock.as_dict()
    assert d["compile and run"]["compile_seconds"] > 0
    assert d["run again"]["compile_seconds"] == 0.0   # cached: nothing compiled
    assert d["sleep"]["seconds"] >= 0.1
    assert d["compile and run"]["compile_seconds"] <= d["compile and run"]["seconds"]
    parts = sum(v["seconds"] for k, v in d.items() if k != "total")
    assert parts == pytest.approx(d["total"]["seconds"], rel=0.05, abs=0.01)
    table = clock.table()
    assert "compile and run" in table and "total" in table


def test_phases_do_not_nest():
    clock = phases.PhaseClock()
    with pytest.raises(RuntimeError, match="do not nest"):
        with clock.phase("a"):
            with clock.phase("b"):
                pass
