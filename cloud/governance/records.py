"""What the alert store (cloud/governance/alerts.py) returns, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.records import Record


@dataclasses.dataclass(frozen=True, slots=True)
class StoredAlert(Record):
    """One alert with its state (open → acknowledged → resolved), who moved it and what the
    governor did about it (``actions``). Field order is the table's column order."""

    id: str
    key: str
    rule: str
    site: str
    device: str | None
    subject: str
    severity: str
    state: str
    message: str
    details: dict[str, Any]
    opened_ts: float
    updated_ts: float
    last_seen_ts: float
    count: int
    acked_by: str | None
    acked_ts: float | None
    ack_comment: str | None
    resolved_by: str | None
    resolved_ts: float | None
    resolve_comment: str | None
    actions: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class AlertEvent(Record):
    ts: float
    actor: str
    event: str
    comment: str | None
