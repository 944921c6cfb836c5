"""Wall-clock timing of a fused training step, shared by the experiment scripts."""

import time

import jax


def seconds_per_step(step, state, data, steps_per_call: int, *, seconds: float = 0.0):
    """Wall-clock seconds per optimisation step of `step(state, data) -> (state, m)`.

    Two warm-up calls (compile, and recompile should the input placement change), one
    call to size the run, then max(3, seconds / that call) calls dispatched
    asynchronously and blocked on once; each call runs `steps_per_call` steps. The
    state is threaded through (the step may donate it).
    """
    for _ in range(2):
        state, m = step(state, data)
        jax.block_until_ready(m)
    t0 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m)
    calls = max(3, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = step(state, data)
    jax.block_until_ready((state, m))
    return (time.perf_counter() - t0) / (calls * steps_per_call)
