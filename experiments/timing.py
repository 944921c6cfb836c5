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


def equal_time_steps(target_s: float, records: list, calib_time_s: float,
                     steps_per_call: int) -> tuple:
    """(steps, seconds per step, fixed seconds): the steps whose training time
    fixed + steps * per_step is closest to target_s (a multiple of steps_per_call, at
    least one call), from a timing run's metrics.jsonl records ({"step", "time"} per
    fused call; the first call, which compiles, is left out of the per-step time) and
    its total training time calib_time_s (fixed = calib_time_s - its steps * per_step:
    compilation and set-up)."""
    if len(records) < 3:
        raise ValueError(f"the timing run logged {len(records)} calls; need at least 3 "
                         "(raise --calibration_steps)")
    first, last = records[1], records[-1]
    per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
    fixed = max(calib_time_s - last["step"] * per_step, 0.0)
    calls = max(1, round((target_s - fixed) / per_step / steps_per_call))
    return calls * steps_per_call, per_step, fixed
