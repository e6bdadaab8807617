"""Shared set-up for the fleet/analysis/governance tests: a cloud config pointing at the test broker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cloud.config import CloudConfig
from cloud.fleet.records import Device, Gap, TelemetryRow
from cloud.governance.records import StoredAlert
from shared.broker import EmbeddedBroker

# Set by the ``fleet_backend`` fixture (tests/conftest.py) while a test runs on PostgreSQL.
PG_URL: str | None = None


def fleet_section() -> dict[str, Any]:
    return {"database_url": PG_URL} if PG_URL else {}


def cloud_cfg(tmp_path: Path, broker: EmbeddedBroker, **sections: dict[str, Any]) -> CloudConfig:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "cloud"),
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "fleet": {"client_id": f"ingest-{tmp_path.name}"[:60], **fleet_section()},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return CloudConfig.model_validate(data)


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


F = TypeVar("F", bound=Callable[..., Any])


def only_backends(*backends: str) -> Callable[[F], F]:
    """Run a test (of a module listed in conftest.BOTH_BACKENDS) on these fleet backends only,
    for behaviour that differs by design, e.g. retention by the box's clock on SQLite versus by
    arrival day on PostgreSQL."""

    def mark(f: F) -> F:
        f.fleet_backends = list(backends)  # type: ignore[attr-defined]
        return f

    return mark


def device_record(**kw: Any) -> Device:
    """A ``devices`` row as the store returns it, with every column not given left empty."""
    row: dict[str, Any] = {f.name: None for f in dataclasses.fields(Device)}
    row.update(evicted_total=0, predictions_total=0)
    return Device.from_row({**row, **kw})


def telemetry_record(row: dict[str, Any]) -> TelemetryRow:
    """A whole telemetry row from the columns a test cares about (received when stamped, unless
    it says otherwise)."""
    full: dict[str, Any] = {f.name: None for f in dataclasses.fields(TelemetryRow)}
    full.update(device="b1", site="p", body={}, received_ts=row.get("ts"))
    return TelemetryRow.from_row({**full, **row})


def gap_record(**kw: Any) -> Gap:
    row: dict[str, Any] = {"id": 1, "device": "b1", "site": "p", "detected_ts": 0.0, **kw}
    return Gap.from_row(row)


def alert_record(**kw: Any) -> StoredAlert:
    """An alert as the store returns it, from the fields a test cares about."""
    row: dict[str, Any] = {f.name: None for f in dataclasses.fields(StoredAlert)}
    row.update(key="k", rule="overheating", site="p", subject="", severity="warning", state="open")
    row.update(message="", details={}, opened_ts=0.0, updated_ts=0.0, last_seen_ts=0.0, count=1, actions=[])
    return StoredAlert.from_row({**row, **kw})
