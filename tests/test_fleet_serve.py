"""Fleet ingest and the analysis scheduler as ``parkwatch cloud serve`` runs them (CloudServer)."""

from __future__ import annotations

from pathlib import Path

from cloud.fleet.store import FleetStore
from cloud.server import CloudServer
from shared.broker import EmbeddedBroker
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice


def test_serve_runs_ingest_and_health_checks(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = cloud_cfg(tmp_path, broker, analysis={"health_interval_s": 0.3})
    srv = CloudServer(cfg, only=["fleet-ingest", "analysis"])
    srv.start()
    dev = SimDevice("127.0.0.1", broker.port, device="box1").connect()
    try:
        assert srv.components["fleet-ingest"].wait_connected(10)  # type: ignore[attr-defined]
        dev.predict(20)
        dev.telemetry(temperatures={"cpu": 95.0})
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 20, what="stored")
        wait_for(
            lambda: store.device("box1")["health"] == "critical", what="overheating seen by the scheduler"
        )
        assert "°C" in store.device("box1")["health_reasons"][0]
    finally:
        dev.disconnect()
        srv.stop()
