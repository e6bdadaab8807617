"""The dashboard benchmark's bulk seeder (bench/seed_pages.py) must leave the fleet store exactly
as the ingest writer does with the same messages, on both backends: otherwise the 10,000-device
page timings would measure a store no box could produce."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.seed_pages import seed_bulk
from cloud.config import CloudConfig
from cloud.fleet.store import FleetStore

TABLES = {
    "devices": "device",
    "telemetry": "device, ts",
    "status_events": "device, ts, state",
    "model_states": "device, ts, state",
    "predictions": "device, seq",
    "outcome_hours": "device, hour",
    "counters": "name",
    "gaps": "device, first_seq",
}


def _dump(cfg: CloudConfig) -> dict[str, list[dict[str, Any]]]:
    with FleetStore(cfg.fleet_store) as fs:
        return {
            t: [
                {k: v for k, v in r.items() if k != "id"} for r in fs.query(f"SELECT * FROM {t} ORDER BY {o}")
            ]
            for t, o in TABLES.items()
        }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bulk_seeding_writes_what_the_writer_writes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    now = time.time()
    dumps = []
    for bulk in (True, False):
        fleet: dict[str, Any] = {}
        if backend == "postgresql":
            fleet["database_url"] = request.getfixturevalue("pg_server").create_database(
                f"seed_{int(bulk)}_{abs(hash(str(tmp_path))) % 10**8}"
            )
        cfg = CloudConfig.model_validate({"data_dir": str(tmp_path / f"bulk{int(bulk)}"), "fleet": fleet})
        names = seed_bulk(
            cfg, devices=5, hours=0.5, step_s=60, predictions=150, offline=(2,), hot=(3,), now=now, bulk=bulk
        )
        assert names == [f"box{i:04d}" for i in range(5)]
        dumps.append(_dump(cfg))
    bulk_dump, writer_dump = dumps
    assert len(bulk_dump["telemetry"]) == 5 * 31 and len(bulk_dump["predictions"]) == 5 * 150
    for table in TABLES:
        assert bulk_dump[table] == writer_dump[table], table
