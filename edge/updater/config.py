"""Updater section of the edge config (owned by the secure-delivery work)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import Section


class UpdaterConfig(Section):
    enabled: bool = True
    trusted_root: Path | None = Field(
        None, description="TUF root.json installed by provisioning; None disables updates"
    )
    check_interval_s: float = Field(300.0, gt=0)
    chunk_bytes: int = Field(256 * 1024, ge=4096, le=1024 * 1024)
    request_timeout_s: float = Field(10.0, gt=0)
    self_test_tolerance: float = Field(1e-3, gt=0)
