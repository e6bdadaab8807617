from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from shared.config import SecretRef, Section


class FleetConfig(Section):
    """Fleet ingest. Defaults suit one ingest worker beside a Mosquitto on the same host."""

    share_group: str = Field("parkwatch-ingest", description="MQTT shared-subscription group")
    client_id: str | None = Field(
        None,
        description="persistent session id, unique per worker; default parkwatch-cloud-ingest-<install "
        "id>: a client that connects with this id takes the session and its queue over, so never make "
        "it guessable",
    )
    session_expiry_s: int = Field(
        14 * 24 * 3600, ge=60, description="how long the broker keeps our queue while ingest is away"
    )
    receive_maximum: int = Field(
        1000, ge=1, le=65535, description="unacknowledged messages the broker may have in flight to us"
    )
    batch_max: int = Field(500, ge=1, description="messages per SQLite transaction at most")
    retention_days: float = Field(90.0, gt=0)
    retention_interval_s: float = Field(3600.0, gt=0, description="how often old rows are pruned")
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    gap_grace_s: float = Field(
        30.0,
        ge=0,
        description="a gap younger than this is not reported yet: late rows may still fill it "
        "(normal with several workers or an outbox resending its backlog)",
    )
    materializer_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="how much the materializer process yields the CPU to the MQTT receiver (nice "
        "increment): during a burst, emptying the broker's queue comes first (under systemd the "
        "unit's Nice= sets it, as its system call filter refuses the process's own change)",
    )
    inbox_lag_alert_s: float = Field(
        300.0,
        gt=0,
        description="alert (ingest_backlog) when an acknowledged message has waited this long in a "
        "worker's inbox for the materializer: the fleet tables are behind",
    )
    snapshot_quota_per_day: int = Field(
        200,
        ge=0,
        description="snapshots kept per device per 24 h at most (per ingest worker); beyond, dropped "
        "and counted as over_quota, so one box cannot fill the disk",
    )
    snapshots_dir: Path | None = Field(
        None, description="where snapshot images land (<id>.jpg); default <data_dir>/snapshots"
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL fleet store shared by several ingest hosts, e.g. "
        "postgresql://parkwatch@db.example:5432/parkwatch; unset keeps <data_dir>/fleet.db (SQLite)",
    )
    database_password: SecretRef | None = Field(
        None, description="the PostgreSQL password (env = ... or file = ...); never inside database_url"
    )
    worker_stale_s: float = Field(
        60.0, gt=0, description="an ingest worker whose heartbeat row is older than this is shown as down"
    )

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        u = urlsplit(v)
        if u.scheme not in ("postgresql", "postgres"):
            raise ValueError("must start with postgresql:// (only PostgreSQL is supported besides fleet.db)")
        if u.password:
            raise ValueError(
                "must not carry a password: put it in fleet.database_password (env = ... or file = ...)"
            )
        if not u.path.strip("/"):
            raise ValueError("must name the database, e.g. postgresql://parkwatch@db:5432/parkwatch")
        return v
