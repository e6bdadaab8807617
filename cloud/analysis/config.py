from __future__ import annotations

from pydantic import Field

from shared.config import Section


class AnalysisConfig(Section):
    interval_s: float = Field(24 * 3600, gt=0, description="scheduled analysis period")
    window_s: float = Field(24 * 3600, gt=0)
    min_samples: int = Field(100, ge=1)
    psi_threshold: float = Field(0.2, gt=0)
    js_threshold: float = Field(0.1, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    max_temperature_c: float = 80.0
    max_cpu_percent: float = 95.0
    max_memory_percent: float = 90.0
    max_disk_percent: float = 90.0
    anomaly_z: float = Field(4.0, gt=0)
