from __future__ import annotations

from pydantic import Field

from shared.config import Section


class FleetConfig(Section):
    share_group: str = Field("parkwatch-ingest", description="MQTT shared-subscription group")
    client_id: str = Field("parkwatch-cloud-ingest", description="persistent session id; unique per worker")
    batch_max: int = Field(500, ge=1)
    batch_interval_s: float = Field(0.2, gt=0)
    retention_days: float = Field(90.0, gt=0)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
