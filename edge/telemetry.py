"""Host and pipeline numbers, sampled every ``[telemetry] interval_s`` and sent with QoS 1.

Why ``None`` for temperatures and not an error: many boxes (and every VM) have no sensors;
the cloud must be able to tell "no sensor" from "0 °C" and the daemon must not crash on either.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import psutil


def temperatures() -> dict[str, float] | None:
    """Sensor label -> °C, or None when the host exposes no sensors."""
    fn = getattr(psutil, "sensors_temperatures", None)
    if fn is None:
        return None
    try:
        raw = fn()
    except (OSError, RuntimeError, ValueError):
        return None
    out: dict[str, float] = {}
    for chip, entries in (raw or {}).items():
        for i, e in enumerate(entries):
            if e.current is None or not math.isfinite(e.current):
                continue  # a sensor reading NaN is no reading; the protocol refuses non-finite numbers
            name = f"{chip}/{e.label or i}"
            out[name] = round(float(e.current), 1)
    return out or None


class HostSampler:
    """psutil readings; ``cpu_percent`` is measured between two calls, so keep one instance."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        self.proc = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)
        psutil.cpu_percent(interval=None, percpu=True)
        self.proc.cpu_percent(interval=None)

    def sample(self) -> dict[str, object]:
        vm = psutil.virtual_memory()
        path = self.disk_path
        while not path.exists() and path != path.parent:
            path = path.parent
        du = psutil.disk_usage(str(path))
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = []
        now = time.time()
        return {
            "cpu_percent": max(psutil.cpu_percent(interval=None), 0.0),
            "cpu_per_core": [max(x, 0.0) for x in psutil.cpu_percent(interval=None, percpu=True)],
            "load_avg": load,
            "memory_percent": min(max(vm.percent, 0.0), 100.0),
            "memory_used_mb": round((vm.total - vm.available) / 2**20, 1),
            "disk_percent": min(max(du.percent, 0.0), 100.0),
            "disk_free_mb": round(du.free / 2**20, 1),
            "temperatures": temperatures(),
            "uptime_process_s": round(max(now - self.proc.create_time(), 0.0), 1),
            "uptime_system_s": round(max(now - psutil.boot_time(), 0.0), 1),
            "process_rss_mb": round(self.proc.memory_info().rss / 2**20, 1),
            "process_cpu_percent": round(self.proc.cpu_percent(interval=None), 1),
        }
