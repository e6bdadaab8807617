"""Shared set-up for the fleet/analysis/governance tests: a cloud config pointing at the test broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cloud.config import CloudConfig
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
