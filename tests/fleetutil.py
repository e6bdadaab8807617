"""Shared set-up for the fleet/analysis/governance tests: a cloud config pointing at the test broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from shared.broker import EmbeddedBroker


def cloud_cfg(tmp_path: Path, broker: EmbeddedBroker, **sections: dict[str, Any]) -> CloudConfig:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "cloud"),
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "fleet": {"client_id": f"ingest-{tmp_path.name}"[:60]},
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
