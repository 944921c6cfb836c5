"""Wall-clock timing of jitted functions."""

from __future__ import annotations

import time
from typing import Callable

import jax


def timed(fn: Callable, *args, repeats: int = 3):
    """(result, best wall seconds) of `fn(*args)` over `repeats` runs after one warm-up
    call (which compiles a jitted fn); each run waits for its result on the device."""
    out = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best
