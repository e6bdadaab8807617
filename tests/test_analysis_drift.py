"""Drift, health and alerts end to end: simulated devices → real broker → ingest → analysis → alerts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from cloud.analysis import stats
from cloud.analysis.drift_baseline import resolve
from cloud.analysis.job import open_governor, run_analysis
from cloud.analysis.scheduler import AnalysisScheduler
from cloud.evaluation.metrics import evaluate
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.governance.records import StoredAlert
from cloud.registry.models import ModelRecord
from cloud.registry.store import Registry
from shared.broker import EmbeddedBroker
from shared.protocol import Topics
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice


def register_model(cfg: Any, version: str = "m1") -> None:
    """A real registry entry whose test-set baseline comes from the build pipeline's own
    ``cloud.evaluation.metrics.evaluate`` on what an unshifted simulated camera produces."""
    sim = SimDevice("127.0.0.1", 1, device="baseline", model_version=version, seed=99)
    preds = sim.make_predictions(2000)
    labels = ["cat", "dog"]
    probs = np.array([[p.probs.get("cat", 0.0), p.probs.get("dog", 0.0)] for p in preds], dtype=np.float32)
    # The simulated model is right 97 % of the time.
    y = np.array([labels.index(max(p.probs, key=p.probs.get)) for p in preds])  # type: ignore[arg-type]
    wrong = np.random.default_rng(0).random(len(y)) < 0.03
    y[wrong] = 1 - y[wrong]
    metrics = evaluate(y, probs, labels)
    with Registry(cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version=version,
                gate_passed=True,
                metrics=metrics,
                package_dir="",
                tarball="",
                tarball_sha256="",
            )
        )


class AlertListener:
    def __init__(self, port: int) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()

        def on_connect(c: mqtt.Client, *a: object) -> None:
            c.subscribe(Topics.ALL_ALERTS, qos=1)
            ready.set()

        self.c.on_connect = on_connect
        self.c.on_message = lambda c, u, m: self.msgs.append(json.loads(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)
        time.sleep(0.2)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def env(tmp_path: Path, broker: EmbeddedBroker):  # type: ignore[no-untyped-def]
    cfg = cloud_cfg(
        tmp_path,
        broker,
        analysis={"interval_s": 2.0, "health_interval_s": 0.5, "window_s": 3600},
        fleet={"heartbeat_timeout_s": 2.0},
    )
    register_model(cfg)
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10)
    yield cfg
    ing.stop()


def drift_alerts(cfg: Any, site: str) -> list[StoredAlert]:
    with AlertStore(cfg.fleet_store) as st:
        return [
            a
            for a in st.list(site=site)
            if a.rule in ("class_mix_drift", "confidence_drift", "abstain_rate", "integrity_rate")
        ]


def test_shifted_class_mix_raises_a_drift_alert_within_one_window_and_unshifted_raises_none(
    env: Any, broker: EmbeddedBroker
) -> None:
    cfg = env
    listener = AlertListener(broker.port)
    shifted = SimDevice("127.0.0.1", broker.port, site="north", device="cam-n1", seed=1).connect()
    steady = SimDevice("127.0.0.1", broker.port, site="south", device="cam-s1", seed=2).connect()
    sched = AnalysisScheduler(cfg)
    try:
        shifted.predict(600, cat_share=0.85)
        steady.predict(600, cat_share=0.5)
        for d in (shifted, steady):
            d.telemetry()
            d.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 1200, what="predictions stored")
        t0 = time.monotonic()
        sched.start()
        wait_for(lambda: drift_alerts(cfg, "north"), timeout=cfg.analysis.interval_s + 10, what="drift alert")
        assert time.monotonic() - t0 < cfg.analysis.interval_s + 10
        wait_for(lambda: sched.analysis_runs >= 1, what="analysis finished")
        north = drift_alerts(cfg, "north")
        assert [a.rule for a in north] == ["class_mix_drift"]
        assert north[0].state == "open" and north[0].device is None and north[0].subject == "m1"
        assert drift_alerts(cfg, "south") == []
        rows = {(r.site, r.device): r for r in store.drift_results(model_version="m1")}
        assert rows[("north", "")].psi > cfg.analysis.psi_threshold
        south_psi = rows[("south", "")].psi
        assert south_psi is not None and south_psi < 0.05 and rows[("south", "")].drifted == 0
        latest = {(r.site, r.device) for r in store.latest_drift()}
        assert {("north", ""), ("north", "cam-n1"), ("south", ""), ("south", "cam-s1")} <= latest
        wait_for(
            lambda: any(m["rule"] == "class_mix_drift" and m["site"] == "north" for m in listener.msgs),
            what="alert published on MQTT",
        )
        rep = json.loads((cfg.paths.reports_dir / "analysis-latest.json").read_text())
        assert any(f["rule"] == "class_mix_drift" for f in rep["findings"])
        html = (cfg.paths.reports_dir / "analysis-latest.html").read_text()
        assert "<svg" in html and "DRIFT" in html and "estimate" in html
    finally:
        sched.stop()
        listener.close()
        shifted.disconnect()
        steady.disconnect()


def test_degraded_frames_raise_confidence_abstain_and_integrity_alerts(
    env: Any, broker: EmbeddedBroker
) -> None:
    cfg = env
    dev = SimDevice("127.0.0.1", broker.port, site="east", device="cam-e1", seed=3).connect()
    try:
        dev.predict(600, degraded=0.7)
        dev.telemetry()
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 600, what="stored")
        gov = open_governor(cfg)
        run_analysis(cfg, store, gov)
        rules = sorted(a.rule for a in drift_alerts(cfg, "east"))
        assert rules == ["abstain_rate", "confidence_drift", "integrity_rate"]
        est = store.drift_results(site="east", device="")[0]
        assert est.est_accuracy < 0.97 - cfg.analysis.est_accuracy_drop
        # Frames get better again: the next analysis with enough clean data resolves the alerts.
        cfg2 = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(update={"window_s": 5.0})})
        time.sleep(5.5)
        dev.predict(600, spacing_s=0.001)
        dev.flush()
        wait_for(lambda: store.prediction_count() == 1200, what="stored")
        run_analysis(cfg2, store, gov)
        with AlertStore(cfg.fleet_store) as st:
            states = {a.rule: (a.state, a.resolved_by) for a in st.list(site="east")}
        assert states["confidence_drift"] == ("resolved", "parkwatch-analysis")
        gov.publisher.close()  # type: ignore[union-attr]
    finally:
        dev.disconnect()


def test_a_silent_device_is_offline_within_the_heartbeat_timeout(env: Any, broker: EmbeddedBroker) -> None:
    cfg = env
    dev = SimDevice("127.0.0.1", broker.port, site="west", device="cam-w1").connect()
    store = FleetStore(cfg.fleet_store)
    sched = AnalysisScheduler(cfg)
    try:
        dev.telemetry()
        dev.flush()
        wait_for(lambda: store.latest_telemetry("cam-w1"), what="telemetry")
        sched.start()

        def talking_and_ok() -> bool:
            # The device keeps talking until a health check has seen it: with one message only,
            # a loaded machine (parallel workers) could hold the first check back longer than
            # heartbeat_timeout_s, so the device was offline before it was ever seen healthy.
            dev.telemetry()
            dev.flush()
            row = store.device("cam-w1")
            return row is not None and row.health == "ok"

        wait_for(talking_and_ok, what="healthy first")
        silent_since = time.monotonic()  # still connected, but says nothing any more
        wait_for(lambda: store.device("cam-w1").health == "offline", timeout=10, what="offline")
        took = time.monotonic() - silent_since
        # Within the timeout plus the health checks that notice it (slack for a loaded CI machine).
        assert took <= cfg.fleet.heartbeat_timeout_s + 2 * cfg.analysis.health_interval_s + 3.0
        with AlertStore(cfg.fleet_store) as st:
            # The alert is opened by the governor just after the health state is written.
            [a] = wait_for(lambda: st.list(rule="device_offline", device="cam-w1"), 10, "offline alert")
        assert "silent" in a.message
        dev.telemetry()  # back: the alert resolves itself
        dev.flush()
        wait_for(lambda: store.device("cam-w1").health == "ok", what="healthy again")
        wait_for(lambda: AlertStore(cfg.fleet_store).get(a.id).state == "resolved", what="resolved")
    finally:
        sched.stop()
        dev.disconnect()


def test_last_will_marks_a_dead_device_offline(env: Any, broker: EmbeddedBroker) -> None:
    cfg = env
    dev = SimDevice("127.0.0.1", broker.port, site="west", device="cam-w2").connect()
    dev.telemetry()
    dev.flush()
    store = FleetStore(cfg.fleet_store)
    wait_for(
        lambda: [d for d in store.devices() if d.device == "cam-w2" and d.status == "online"],
        what="online",
    )
    dev.kill()
    wait_for(lambda: store.device("cam-w2").status == "offline", timeout=60, what="last-will stored")
    assert store.device("cam-w2").status_reason == "last-will"


def test_labels_give_accuracy_and_the_recall_gap(env: Any, broker: EmbeddedBroker) -> None:
    cfg = env
    dev = SimDevice("127.0.0.1", broker.port, site="zoo", device="cam-z1", seed=5).connect()
    try:
        preds = [p for p in dev.predict(200) if not p.abstain]
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 200, what="stored")
        # Ground truth: every dog is found, but 40 % of the frames called "dog" are really cats.
        for i, p in enumerate(preds[:100]):
            truth = "cat" if (p.label == "dog" and i % 5 < 2) else p.label
            store.add_feedback(store.prediction(f"cam-z1:{p.seq}"), truth, actor="qa")
        run_analysis(cfg, store, None, write_report=False)
        row = store.drift_results(site="zoo", device="")[0]
        det = row.details
        assert det["recall"]["dog"] == 1.0 and det["recall"]["cat"] < 0.8
        assert row.recall_gap > cfg.analysis.recall_gap_max
        assert row.accuracy is not None and row.accuracy < 0.9 and row.n_labels == 100
        assert any("recall gap" in r for r in row.reasons) and any("accuracy" in r for r in row.reasons)
    finally:
        dev.disconnect()


def test_statistics_match_textbook_values() -> None:
    e, a = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    assert stats.psi(e, a) == pytest.approx(0.3 * np.log(1.6) + 0.3 * np.log(2.5))
    assert stats.js_distance(e, e) == 0.0
    assert stats.js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(np.sqrt(np.log(2)))
    rng = np.random.default_rng(0)
    edges = [i / 20 for i in range(21)]
    base = stats.histogram(rng.uniform(0, 1, 5000), edges)
    d_same, p_same = stats.ks_against_hist(rng.uniform(0, 1, 2000), base, edges)
    d_shift, p_shift = stats.ks_against_hist(rng.uniform(0, 1, 2000) ** 2, base, edges)
    assert p_same > 0.05 and d_same < 0.05
    assert p_shift < 1e-6 and d_shift == pytest.approx(0.25, abs=0.03)
    assert stats.robust_z([10, 11, 9, 10, 10, 11, 9], 30) > 10


def test_baseline_is_read_from_the_registry_in_the_evaluation_format(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    register_model(cfg, "m9")
    b = resolve(cfg.paths.registry_db, "m9", abstain_threshold=0.6)
    assert b is not None and b.source == "registry:metrics.baseline"
    assert set(b.class_mix) == {"cat", "dog"} and abs(b.class_mix["cat"] - 0.5) < 0.05
    assert len(b.edges) == 21 and b.edges[0] == 0.0 and b.edges[-1] == 1.0
    assert b.accuracy is not None and abs(b.accuracy - 0.97) < 0.02
    assert 0.0 <= b.abstain_rate < 0.01  # the simulated camera almost never falls below 0.6
    assert resolve(cfg.paths.registry_db, "not-registered") is None
