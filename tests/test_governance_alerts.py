"""Alerts: state machine with actors, MQTT publication, signed webhook, actions, audit log."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from cloud.analysis.job import open_governor
from cloud.governance.alerts import AlertStore
from cloud.governance.engine import ack_alert
from cloud.governance.errors import AlertStateError
from cloud.governance.notify import SIGNATURE_HEADER, sign
from cloud.governance.rules import Finding
from cloud.registry.audit import AuditLog
from shared.broker import EmbeddedBroker
from shared.cli import main
from tests.fleetutil import cloud_cfg, wait_for
from tests.test_analysis_drift import AlertListener


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def webhook():  # type: ignore[no-untyped-def]
    Hook.received = []
    srv = HTTPServer(("127.0.0.1", 0), Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}/hook"
    srv.shutdown()


def test_alert_lifecycle_webhook_mqtt_and_audit(
    tmp_path: Path, broker: EmbeddedBroker, webhook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW_HOOK_SECRET", "s3cret")
    cfg = cloud_cfg(
        tmp_path,
        broker,
        governance={
            "webhook_url": webhook,
            "webhook_secret": {"env": "PW_HOOK_SECRET"},
            "rules": {"overheating": {"actions": ["notify", "rollback"]}},
        },
    )
    listener = AlertListener(broker.port)
    gov = open_governor(cfg)
    try:
        hot = Finding(
            "overheating", "park1", "box1: 91 °C > 80 °C", device="box1", details={"temperature_c": 91}
        )
        out = gov.apply([hot], "health")
        [a] = out["opened"]
        assert a.severity == "critical" and a.state == "open"
        # Same condition next check: one alert, counted, no second webhook.
        assert gov.apply([hot], "health")["refreshed"][0].count == 2
        assert len(Hook.received) == 1
        headers, body = Hook.received[0]
        assert headers[SIGNATURE_HEADER] == sign("s3cret", body)
        assert json.loads(body)["rule"] == "overheating"
        # Rollback asked for: no group is known for this site, so it is recorded as failed, not raised.
        acts = {x["action"]: x for x in AlertStore(cfg.fleet_store).get(a.id).actions}
        assert acts["notify"]["ok"] is True
        assert acts["rollback"]["ok"] is False and acts["rollback"]["error"]

        env = {"PARKWATCH_CONFIG": str(_write_cfg(tmp_path, cfg))}
        r = CliRunner().invoke(
            main,
            ["cloud", "alerts", "ack", a.id, "--actor", "olga", "--comment", "fan replaced", "--json"],
            env=env,
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["acked_by"] == "olga"
        r = CliRunner().invoke(main, ["cloud", "alerts", "ack", a.id, "--actor", "olga"], env=env)
        assert r.exit_code == 1 and "already acknowledged" in r.output
        r = CliRunner().invoke(
            main, ["cloud", "alerts", "list", "--state", "acknowledged", "--json"], env=env
        )
        assert [x["id"] for x in json.loads(r.output)] == [a.id]
        # Condition gone at the next check: the governor resolves it itself.
        assert gov.apply([], "health")["resolved"][0].resolved_by == "parkwatch-analysis"
        with pytest.raises(AlertStateError):
            AlertStore(cfg.fleet_store).resolve(a.id, "olga")
        wait_for(
            lambda: (
                [m["state"] for m in listener.msgs if m["id"] == a.id] == ["open", "acknowledged", "resolved"]
            ),
            what="three transitions on MQTT",
        )
        log = AuditLog(cfg.paths.registry_db)
        actions = [e.action for e in log.entries(subject=f"alert:{a.id}")]
        assert actions == [
            "alert.open",
            "alert.action.notify",
            "alert.action.rollback",
            "alert.acknowledge",
            "alert.resolve",
        ]
        assert log.verify().ok
        events = AlertStore(cfg.fleet_store).events(a.id)
        assert [(e.actor, e.event) for e in events][3] == ("olga", "ack")
    finally:
        listener.close()
        gov.publisher.close()  # type: ignore[union-attr]


def test_disabled_rule_raises_nothing_and_unknown_rule_is_a_config_error(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker, governance={"rules": {"telemetry_anomaly": {"enabled": False}}})
    gov = open_governor(cfg, publish=False)
    out = gov.apply([Finding("telemetry_anomaly", "p", "x", device="d", subject="cpu_percent")], "health")
    assert out["opened"] == []
    with pytest.raises(Exception, match="unknown rule"):
        cloud_cfg(tmp_path, broker, governance={"rules": {"no_such_rule": {}}})


def _write_cfg(tmp_path: Path, cfg: Any) -> Path:
    from cloud.config import to_toml

    p = tmp_path / "cloud.toml"
    p.write_text(to_toml(cfg))
    return p


def test_a_state_change_the_broker_missed_is_published_by_the_next_run(tmp_path: Path) -> None:
    """Broker down while an alert opens and is acknowledged: the governor's next run, once the
    broker is back, publishes the alert's current state; nothing stays unannounced."""
    broker = EmbeddedBroker(tmp_path / "b")  # not running yet
    cfg = cloud_cfg(tmp_path, broker)
    gov = open_governor(cfg)
    store = AlertStore(cfg.fleet_store)
    hot = Finding("overheating", "park1", "box1: 91 °C > 80 °C", device="box1")
    try:
        [a] = gov.apply([hot], "health")["opened"]
        ack_alert(store, a.id, "olga", "fan replaced", publisher=gov.publisher)
        assert store.unpublished() == [a.id]  # remembered, once, with its latest state to come
        broker.start()
        listener = AlertListener(broker.port)
        try:
            wait_for(
                lambda: (
                    gov.apply([hot], "health") and [m["state"] for m in listener.msgs] == ["acknowledged"]
                ),
                timeout=60,
                what="the acknowledged state published once the broker is back",
            )
            assert store.unpublished() == []
        finally:
            listener.close()
    finally:
        gov.publisher.close()  # type: ignore[union-attr]
        store.close()
        broker.stop()
