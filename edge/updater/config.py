"""Updater section of the edge config (owned by the secure-delivery work)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.config import Section


class UpdaterConfig(Section):
    enabled: bool = True
    trusted_root: Path | None = Field(
        None, description="TUF root.json installed by provisioning; None disables updates"
    )
    required_stage: Literal["staging", "production"] | None = Field(
        None,
        description="approval stage this box needs; default: staging for group 'staging', "
        "production for every other group",
    )
    check_interval_s: float = Field(300.0, gt=0)
    chunk_bytes: int = Field(256 * 1024, ge=4096, le=1024 * 1024)
    request_timeout_s: float = Field(10.0, gt=0)
    request_retries: int = Field(3, ge=1, description="per chunk, for metadata")
    download_deadline_s: float = Field(
        1800.0, gt=0, description="a package download keeps resuming across outages this long"
    )
    max_package_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    self_test_tolerance: float = Field(1e-3, gt=0)
    warmup_runs: int = Field(3, ge=0, le=100)
    keep_versions: int = Field(2, ge=1, description="installed packages kept (current + previous)")
