"""Analysis thresholds. Defaults and why are in docs/operator.md ("Thresholds")."""

from __future__ import annotations

from pydantic import Field

from shared.config import Section


class AnalysisConfig(Section):
    interval_s: float = Field(24 * 3600, gt=0, description="scheduled drift/performance analysis period")
    window_s: float = Field(24 * 3600, gt=0, description="predictions looked at by one analysis")
    health_interval_s: float = Field(15.0, gt=0, description="how often device health is re-evaluated")
    min_samples: int = Field(100, ge=1, description="fewer predictions in a cohort: figures only, no verdict")
    # prediction mix
    psi_threshold: float = Field(0.2, gt=0)
    js_threshold: float = Field(0.1, gt=0)
    # confidence distribution
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    ks_min_statistic: float = Field(0.1, gt=0, le=1, description="effect size a KS result must also reach")
    abstain_threshold: float = Field(
        0.6, gt=0, lt=1, description="the edge's confidence_threshold; gives a baseline its abstain rate"
    )
    abstain_rate_increase: float = Field(0.10, gt=0, le=1, description="over the baseline's abstain rate")
    integrity_rate_max: float = Field(0.10, gt=0, le=1, description="share of frames with integrity flags")
    # performance
    est_accuracy_drop: float = Field(0.05, gt=0, le=1, description="CBPE estimate below the baseline by this")
    accuracy_drop: float = Field(0.05, gt=0, le=1, description="labelled accuracy below the baseline by this")
    recall_gap_max: float = Field(0.15, gt=0, le=1, description="|recall(cat) - recall(dog)| on labels")
    min_labels: int = Field(30, ge=1)
    # device health
    max_temperature_c: float = 80.0
    max_cpu_percent: float = 95.0
    max_memory_percent: float = 90.0
    max_disk_percent: float = 90.0
    saturation_samples: int = Field(3, ge=1, description="consecutive telemetry samples over a limit")
    anomaly_z: float = Field(4.0, gt=0)
    anomaly_history: int = Field(60, ge=5, description="telemetry samples the robust z-score looks back on")
    camera_stall_s: float = Field(60.0, gt=0, description="no frame for this long while 'streaming'")
