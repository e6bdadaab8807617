"""``[release]`` section of the cloud config (secure delivery)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import Section


class ReleaseConfig(Section):
    keys_dir: Path | None = Field(None, description="default: <data_dir>/keys (mode 0700, files 0600)")
    approver_keys_dir: Path | None = Field(
        None, description="where the approver's keys live if not in keys_dir (e.g. removable disk)"
    )
    timestamp_expiry_s: int = Field(24 * 3600, ge=60)
    snapshot_expiry_s: int = Field(7 * 24 * 3600, ge=60)
    targets_expiry_s: int = Field(90 * 24 * 3600, ge=60)
    pipeline_expiry_s: int = Field(365 * 24 * 3600, ge=60)
    rollout_expiry_s: int = Field(30 * 24 * 3600, ge=60)
    root_expiry_s: int = Field(365 * 24 * 3600, ge=3600)
    root_threshold: int = Field(1, ge=1)
    targets_threshold: int = Field(1, ge=1, description="approver signatures needed")
    pipeline_threshold: int = Field(1, ge=1)
    rollout_threshold: int = Field(1, ge=1)
    refresh_check_s: float = Field(30.0, gt=0, description="how often cloud serve checks expiries")
    chunk_bytes: int = Field(256 * 1024, ge=4096, le=1024 * 1024)
    responder_workers: int = Field(2, ge=1, le=32)
    responder_rate_per_device: float = Field(
        20.0, gt=0, description="update requests per second one device is served at most (token bucket)"
    )
    responder_burst: int = Field(40, ge=1, description="requests a device may send at once before pacing")
    responder_queue_per_device: int = Field(
        8, ge=1, le=1000, description="requests of one device waiting at most; beyond, a refusal"
    )
    require_staging_before_production: bool = True
    staging_groups: list[str] = Field(
        default_factory=lambda: ["staging"],
        description="groups that run staging-approved versions; every other group needs production",
    )
    watch_window_s: float = Field(600.0, gt=0)
    max_self_test_failures: int = Field(1, ge=1)
    max_latency_p99_ms: float = Field(500.0, gt=0)
    max_abstain_rate_jump: float = Field(0.2, gt=0, le=1)
    max_inference_errors: int = Field(10, ge=0)
    auto_rollback: bool = True
    broker_dir: Path | None = Field(
        None,
        description="where 'devices' writes the Mosquitto password and ACL files "
        "(default: <data_dir>/broker)",
    )
    cloud_username: str = Field("parkwatch-cloud", description="the cloud's own broker account")
    client_id: str | None = Field(
        None,
        description="MQTT client id of the release service; default parkwatch-cloud-release-<install id>",
    )
