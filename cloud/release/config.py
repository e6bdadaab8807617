from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import Section


class ReleaseConfig(Section):
    keys_dir: Path | None = Field(None, description="default: <data_dir>/keys (mode 0700, files 0600)")
    timestamp_expiry_s: int = Field(24 * 3600, ge=60)
    snapshot_expiry_s: int = Field(7 * 24 * 3600, ge=60)
    targets_expiry_s: int = Field(90 * 24 * 3600, ge=60)
    root_expiry_s: int = Field(365 * 24 * 3600, ge=3600)
    root_threshold: int = Field(1, ge=1)
    targets_threshold: int = Field(1, ge=1)
    chunk_bytes: int = Field(256 * 1024, ge=4096, le=1024 * 1024)
    require_staging_before_production: bool = True
    watch_window_s: float = Field(600.0, gt=0)
    max_self_test_failures: int = Field(1, ge=1)
    max_latency_p99_ms: float = Field(500.0, gt=0)
    max_abstain_rate_jump: float = Field(0.2, gt=0, le=1)
    max_inference_errors: int = Field(10, ge=0)
