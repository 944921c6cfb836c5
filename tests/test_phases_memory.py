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
