"""phases.peak_device_memory_mib: None on backends without memory statistics, else
the largest peak over local devices (checked with a fake device list)."""

import jax

from lfm_jax import phases


class _Dev:
    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


def test_peak_memory_none_without_stats(monkeypatch):
    monkeypatch.setattr(jax, "local_devices", lambda: [_Dev(None), _Dev(RuntimeError())])
    assert phases.peak_device_memory_mib() is None


def test_peak_memory_is_max_over_devices_in_mib(monkeypatch):
    devs = [_Dev({"peak_bytes_in_use": 3 * 2**20}), _Dev({"peak_bytes_in_use": 5 * 2**20}),
            _Dev({"bytes_in_use": 9 * 2**20})]
    monkeypatch.setattr(jax, "local_devices", lambda: devs)
    assert phases.peak_device_memory_mib() == 5.0


def test_write_metrics_adds_phases_and_peak_memory(tmp_path, monkeypatch):
    import json

    from lfm_jax.runs import jobs

    clock = phases.PhaseClock()
    with clock.phase("train"):
        pass
    monkeypatch.setattr(phases, "peak_device_memory_mib", lambda: 12.5)
    results = {"test_nll": 1.0}
    jobs.write_metrics(str(tmp_path), results, clock)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["peak_device_memory_mib"] == 12.5 == results["peak_device_memory_mib"]
    assert "train" in written["phases"] and written["test_nll"] == 1.0
    monkeypatch.setattr(phases, "peak_device_memory_mib", lambda: None)  # CPU
    jobs.write_metrics(str(tmp_path / "cpu"), {"test_nll": 2.0})
    assert "peak_device_memory_mib" not in json.loads((tmp_path / "cpu" / "metrics.json").read_text())
