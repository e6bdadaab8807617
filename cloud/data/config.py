from __future__ import annotations

from pydantic import Field

from shared.config import Section


class IngestConfig(Section):
    min_side: int = Field(32, ge=1, description="images with a shorter side are quarantined")
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    workers: int = Field(0, ge=0, description="hashing processes; 0 = one per core")
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".webp"])
