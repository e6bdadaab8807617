"""Ground-truth feedback through real HTTP (the router in a FastAPI app) and the CLI; lineage."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud.fleet.http import feedback_router
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from cloud.registry.audit import AuditLog
from cloud.registry.store import Registry
from shared.broker import EmbeddedBroker
from shared.cli import main
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice
from tests.test_analysis_drift import register_model
from tests.test_governance_alerts import _write_cfg


def test_feedback_over_http_and_cli_then_lineage(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    register_model(cfg)
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10), "ingest did not connect"
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="box1", seed=7).connect()
    try:
        preds = dev.predict(200, degraded=0.5)
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 200, what="stored")
        dev.disconnect()  # says goodbye: the retained offline status
        wait_for(lambda: store.device("box1").status == "offline", what="goodbye stored")
    finally:
        dev.disconnect()
        ing.stop()
    snap = next(p for p in preds if p.snapshot)
    app = FastAPI()
    # Registry's connection may be used from the server's worker threads (AuditLog(path)'s may not).
    app.include_router(feedback_router(store, audit=Registry(cfg.paths.registry_db).audit))
    http = TestClient(app)
    r = http.post("/api/feedback", json={"prediction_id": "box1:3", "label": "neither", "actor": "ana"})
    assert r.status_code == 201, r.text
    # "neither" (the older name) is stored as "none", the model's own no-pet outcome.
    assert r.json()["predicted"] == preds[2].label and r.json()["label"] == "none"
    r = http.post("/api/feedback", json={"snapshot": snap.snapshot, "label": "cat", "actor": "ana"})
    assert r.status_code == 201 and r.json()["prediction_id"] == f"box1:{snap.seq}"
    assert (
        http.post(
            "/api/feedback", json={"prediction_id": "box1:99999", "label": "cat", "actor": "a"}
        ).status_code
        == 404
    )
    assert (
        http.post(
            "/api/feedback", json={"prediction_id": "box1:1", "label": "horse", "actor": "a"}
        ).status_code
        == 422
    )
    assert (
        http.post(
            "/api/feedback", json={"prediction_id": "box1:1", "snapshot": "x", "label": "cat", "actor": "a"}
        ).status_code
        == 422
    )
    assert (
        http.post(
            "/api/feedback", json={"prediction_id": "nocolon", "label": "cat", "actor": "a"}
        ).status_code
        == 422
    )

    env = {"PARKWATCH_CONFIG": str(_write_cfg(tmp_path, cfg))}
    cr = CliRunner().invoke(
        main, ["cloud", "label", "box1:5", "--as", "dog", "--actor", "ben", "--json"], env=env
    )
    assert cr.exit_code == 0, cr.output
    assert json.loads(cr.output)["actor"] == "ben"
    cr = CliRunner().invoke(
        main, ["cloud", "label", "box1:5", "--snapshot", "s", "--as", "dog", "--actor", "b"], env=env
    )
    assert cr.exit_code == 1 and "exactly one" in cr.output
    fb = {f.seq: f.label for f in store.feedback()}
    assert fb == {3: "none", snap.seq: "cat", 5: "dog"}
    assert [e.action for e in AuditLog(cfg.paths.registry_db).entries()][-3:] == ["feedback.label"] * 3

    cr = CliRunner().invoke(main, ["cloud", "lineage", "box1:5", "--json"], env=env)
    assert cr.exit_code == 0, cr.output
    lin = json.loads(cr.output)
    assert lin["prediction"]["device"] == "box1" and lin["prediction"]["camera"] == "cam1"
    assert lin["model_version"] == "m1" and lin["model"]["gate_passed"] is True
    assert lin["feedback"]["label"] == "dog"
    cr = CliRunner().invoke(main, ["cloud", "lineage", "nope-version"], env=env)
    assert cr.exit_code == 1 and "nope-version" in cr.output

    cr = CliRunner().invoke(main, ["cloud", "health", "--check", "--json"], env=env)
    assert cr.exit_code == 0, cr.output
    [d] = json.loads(cr.output)
    assert d["device"] == "box1" and d["health"] == "offline"  # it said goodbye
    cr = CliRunner().invoke(main, ["cloud", "analyze", "--json", "--no-alerts"], env=env)
    assert cr.exit_code == 0, cr.output
    assert json.loads(cr.output)["totals"]["predictions"] == 200
