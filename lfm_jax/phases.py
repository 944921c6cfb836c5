"""Where a run's wall-clock time goes: named phases, and the compilation inside them.

    clock = phases.PhaseClock()
    with clock.phase("train"):
        ...
    with clock.phase("final NLL"):
        ...
    print(clock.table())            # phase | seconds | of which compiling | share
    metrics["phases"] = clock.as_dict()

A phase's seconds are the wall-clock time between entering and leaving it (a phase
entered several times adds up; phases do not nest). "Of which compiling" is the time
JAX reports, through `jax.monitoring`, for tracing, lowering and XLA compilation of
the programs first run inside the phase (the events `/jax/core/compile/*_duration`);
a program loaded from the persistent compilation cache reports little or nothing.
Time outside every phase (from the clock's creation to `table()`) is the row "other".
Work that JAX dispatches asynchronously is counted in the phase that waits for it:
end a phase with a host read of its results (`jax.block_until_ready`, `np.asarray`)
when its time matters.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

from jax import monitoring

__all__ = ["PhaseClock", "phase", "peak_device_memory_mib"]

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")

_ACTIVE: list = []  # clocks that receive compile events (module-level listener below)


def _on_event(name: str, seconds: float, **_) -> None:
    if name in _COMPILE_EVENTS:
        for clock in _ACTIVE:
            clock._add_compile(seconds)


monitoring.register_event_duration_secs_listener(_on_event)


class PhaseClock:
    """Wall-clock seconds per named phase, and the compile seconds inside each."""

    def __init__(self):
        self._start = time.perf_counter()
        self.seconds: dict = {}
        self.compile_seconds: dict = {}
        self._current: Optional[str] = None

    def _add_compile(self, seconds: float) -> None:
        name = self._current or "other"
        self.compile_seconds[name] = self.compile_seconds.get(name, 0.0) + float(seconds)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time the block as phase `name` (added to earlier entries of the same name)."""
        if self._current is not None:
            raise RuntimeError(f"phase {name!r} entered inside phase {self._current!r}; "
                               "phases do not nest")
        self._current = name
        _ACTIVE.append(self)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            _ACTIVE.remove(self)
            self._current = None

    def add(self, name: str, seconds: float) -> None:
        """Add seconds measured elsewhere to phase `name` (e.g. a block's push time)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def total(self) -> float:
        """Seconds since the clock was created."""
        return time.perf_counter() - self._start

    def as_dict(self) -> dict:
        """{phase: {"seconds", "compile_seconds"}} including "other" and "total"."""
        total = self.total()
        rows = {k: {"seconds": v, "compile_seconds": self.compile_seconds.get(k, 0.0)}
                for k, v in self.seconds.items()}
        rows["other"] = {"seconds": max(total - sum(self.seconds.values()), 0.0),
                         "compile_seconds": self.compile_seconds.get("other", 0.0)}
        rows["total"] = {"seconds": total,
                         "compile_seconds": sum(self.compile_seconds.values())}
        return rows

    def table(self) -> str:
        """The phases as a fixed-width text table (seconds, compiling, share of total)."""
        rows = self.as_dict()
        total = rows["total"]["seconds"] or 1.0
        lines = [f"{'phase':<22s}{'seconds':>10s}{'compiling':>11s}{'share':>8s}"]
        for name, r in rows.items():
            lines.append(f"{name:<22s}{r['seconds']:>10.2f}{r['compile_seconds']:>11.2f}"
                         f"{100 * r['seconds'] / total:>7.1f}%")
        return "\n".join(lines)


def phase(clock: Optional[PhaseClock], name: str):
    """`clock.phase(name)`, or a no-op context when clock is None (optional clocks)."""
    return contextlib.nullcontext() if clock is None else clock.phase(name)


def peak_device_memory_mib():
    """Largest peak of device memory in use (MiB) over this process's local devices
    since the process started (`Device.memory_stats()["peak_bytes_in_use"]`: JAX's
    counter cannot be reset), or None where the backend reports none (CPU)."""
    import jax

    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # backends without memory statistics
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) / 2**20 if peaks else None
