"""Every page through the real app over HTTP, on a fleet written by the real ingest writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.config import CloudConfig
from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.governance.rules import Finding
from cloud.registry.audit import AuditLog
from cloud.registry.models import ModelRecord
from cloud.registry.store import Registry
from tests.dashutil import client_for, make_cfg, seed_fleet, seed_users, sign_in


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = make_cfg(tmp_path, dashboard={"snapshot_sites": ["park1"]}, fleet={"heartbeat_timeout_s": 60})
    seed_users(c)
    seed_fleet(c, devices=4, hours=2, step_s=60, predictions=20, offline=(1,), hot=(2,))
    return c


def test_empty_pages_say_what_to_do(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    seed_users(cfg)
    c = client_for(cfg)
    sign_in(c, "viewer")
    expect = {
        "/": "No device has reported yet",
        "/models": "Train one with",
        "/alerts": "No open alerts",
        "/labelling": "No site allows snapshots",
        "/quality": "No drift analysis yet",
        "/audit": "No audit entries",
        "/lineage": "No predictions stored yet",
    }
    for path, text in expect.items():
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert text in r.text, path


def test_fleet_page_shows_liveness_health_and_filters(cfg) -> None:  # type: ignore[no-untyped-def]
    store = FleetStore(cfg.fleet_store)
    store.set_health("box0002", "critical", ["temperature 85 °C over 80 °C"], 0)
    c = client_for(cfg)
    sign_in(c, "viewer")
    r = c.get("/")
    assert r.status_code == 200
    html = r.text
    assert html.count('data-device="') == 4
    assert 'id="count-offline">1<' in html and 'id="count-online">3<' in html
    assert "temperature 85 °C over 80 °C" in html and "critical" in html
    assert "cam1: streaming" in html
    r = c.get("/", params={"status": "offline"})
    assert r.text.count('data-device="') == 1 and 'data-device="box0001"' in r.text
    r = c.get("/", params={"site": "park2"})
    assert r.text.count('data-device="') == 2
    r = c.get("/", params={"sort": "temp", "desc": "true"})
    first = r.text.index('data-device="')
    assert r.text[first : first + 30].startswith('data-device="box0002"')
    # the live region is refreshed by htmx with just the partial
    r = c.get("/", headers={"HX-Request": "true"})
    assert r.text.lstrip().startswith('<div id="fleet-live"') and "<html" not in r.text


def test_fleet_page_lists_ingest_workers_of_every_host_from_their_heartbeat_rows(cfg) -> None:  # type: ignore[no-untyped-def]
    import time

    from cloud.fleet.backends import open_writer
    from cloud.fleet.workers import Beat, write_beat

    w = open_writer(cfg.fleet_store)
    write_beat(w.conn, Beat(worker="ingest-a", started_ts=time.time(), backlog=12, oldest_age_s=3.0))
    write_beat(w.conn, Beat(worker="ingest-b", started_ts=time.time(), stored_predictions=7))
    # ingest-c's host went away a while ago: its last heartbeat is old.
    write_beat(w.conn, Beat(worker="ingest-c", started_ts=0.0))
    w.conn.execute(
        "UPDATE ingest_workers SET heartbeat_ts=? WHERE worker='ingest-c'".replace(
            "?", "%s" if cfg.fleet.database_url else "?"
        ),
        (time.time() - 3600,),
    )
    # ingest-a's materializer applied one batch: its counters, as its writer keeps them.
    from cloud.fleet.materializer_stats import BatchFacts, add_batch

    pg = bool(cfg.fleet.database_url)
    if pg:
        with w.conn.transaction():
            add_batch(w.conn, True, "ingest-a", BatchFacts(4321, 0, time.time() - 2), 777, 0, 3)
    else:
        with w.conn:
            add_batch(w.conn, False, "ingest-a", BatchFacts(4321, 0, time.time() - 2), 777, 0, 3)
    if not cfg.fleet.database_url:
        w.conn.commit()
    w.db.close()
    c = client_for(cfg)
    sign_in(c, "viewer")
    html = c.get("/").text
    assert 'data-worker="ingest-a"' in html and 'data-worker="ingest-b"' in html
    row_c = html[html.index('data-worker="ingest-c"') :]
    assert "down" in row_c[: row_c.index("</tr>")]
    row_a = html[html.index('data-worker="ingest-a"') :]
    assert "running" in row_a[: row_a.index("</tr>")] and ">12<" in row_a[: row_a.index("</tr>")]
    # Materialized messages, stored predictions and dead letters from the fleet store's counters.
    cells = row_a[: row_a.index("</tr>")]
    assert ">4321<" in cells and ">777<" in cells and ">3<" in cells and "(waited 2" in cells, cells


def test_device_page_has_charts_and_history(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    sign_in(c, "viewer")
    r = c.get("/devices/box0000", params={"window": "1h"})
    assert r.status_code == 200
    for title in ("CPU", "Temperature", "Memory", "Inference latency", "Frames per second per camera"):
        assert f'aria-label="{title}"' in r.text
    assert "cam2" in r.text and "p99" in r.text
    assert "active" in r.text  # model-state history
    # the limit lines docs/operator-dashboard.md promises on the latency and fps charts too
    latency = r.text.split('aria-label="Inference latency"')[1].split("</svg>")[0]
    assert "p99 limit (rollback)" in latency
    fps = r.text.split('aria-label="Frames per second per camera"')[1].split("</svg>")[0]
    assert "anomaly limit (box)" in fps


def test_fps_floor_is_where_the_anomaly_rule_starts_flagging() -> None:
    from cloud.analysis.stats import robust_z
    from cloud.dashboard.views.devices import fps_floor

    history = [10.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9]
    floor = fps_floor(history, 4.0, 60)
    assert floor is not None and 0 < floor < 10
    assert robust_z(history, floor - 0.01) < -4.0 < robust_z(history, floor + 0.01)
    assert fps_floor([10.0, 10.0], 4.0, 60) is None  # too little history to judge


def test_quality_page_says_not_judged_for_a_model_without_baseline(cfg) -> None:  # type: ignore[no-untyped-def]
    """It said "✔ no drift" for cohorts never compared (the untrained baseline model, n=14)."""
    from cloud.analysis.job import run_analysis
    from cloud.fleet.store import FleetStore

    with FleetStore(cfg.fleet_store) as fleet:
        run_analysis(cfg, fleet, None, baseline_of=lambda v: None, write_report=False)
    c = client_for(cfg)
    sign_in(c, "viewer")
    page = c.get("/quality").text
    assert "not judged: no baseline" in page and "✔ no drift" not in page
    assert c.get("/devices/nope").status_code == 404


def test_alerts_ack_by_engineer_not_viewer_and_audited(cfg, broker) -> None:  # type: ignore[no-untyped-def]
    import json
    import queue

    import paho.mqtt.client as mqtt

    from shared.protocol import Topics

    cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"port": broker.port})})
    published: queue.Queue[dict[str, object]] = queue.Queue()
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: published.put(json.loads(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(Topics.alerts("park1"), qos=1)
    sub.loop_start()
    alerts = AlertStore(cfg.fleet_store)
    a, _ = alerts.raise_finding(
        Finding(
            rule="overheating",
            site="park1",
            device="box0002",
            subject="device:box0002",
            message="box0002 at 85 °C",
            details={},
        ),
        "critical",
        "analysis",
    )
    c = client_for(cfg)
    token = sign_in(c, "viewer")
    r = c.get("/alerts")
    assert "box0002 at 85 °C" in r.text and "engineers and approvers act on alerts" in r.text
    r = c.post(f"/alerts/{a.id}/ack", data={"comment": "x", "csrf_token": token})
    assert r.status_code == 403
    c2 = client_for(cfg)
    token = sign_in(c2, "engineer")
    r = c2.post(f"/alerts/{a.id}/ack", data={"comment": "fan replaced"}, follow_redirects=False)
    assert r.status_code == 403  # no token
    r = c2.post(f"/alerts/{a.id}/ack", data={"comment": "fan replaced", "csrf_token": token})
    assert r.status_code == 200 and "acknowledged" in r.text
    assert alerts.get(a.id).state == "acknowledged" and alerts.get(a.id).acked_by == "engineer"
    msg = published.get(timeout=10)  # the new state went out on MQTT, as from the CLI
    assert (msg["id"], msg["state"]) == (a.id, "acknowledged")
    sub.loop_stop()
    sub.disconnect()
    entry = AuditLog(cfg.paths.registry_db).entries(subject=f"alert:{a.id}")[0]
    assert entry.actor == "engineer" and entry.details["comment"] == "fan replaced"
    r = c2.get("/alerts", params={"state": "acknowledged"})
    assert "fan replaced" in r.text and "Resolve" in r.text
    r = c2.post(f"/alerts/{a.id}/ack", data={"comment": "again", "csrf_token": token})
    assert r.status_code == 400 and "already acknowledged" in r.text
    r = c2.post(f"/alerts/{a.id}/resolve", data={"comment": "temperature normal", "csrf_token": token})
    assert r.status_code == 200 and f"Alert {a.id} resolved" in r.text
    assert alerts.get(a.id).resolved_by == "engineer"
    assert c2.post(f"/alerts/{a.id}/delete", data={"csrf_token": token}).status_code == 404
    actions = [e.action for e in AuditLog(cfg.paths.registry_db).entries(subject=f"alert:{a.id}")]
    assert actions == ["alert.acknowledge", "alert.resolve"]


def test_labelling_respects_site_policy_and_counts_on_quality(cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    snaps = cfg.data_dir / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    (snaps / "box0000-snap-1.jpg").write_bytes(b"\xff\xd8\xff\xe0fakejpeg")
    c = client_for(cfg)
    token = sign_in(c, "engineer")
    r = c.get("/labelling")
    # box0000 is at park1 (allowed), box0001 at park2 (not allowed): only park1 snapshots shown
    assert 'data-snapshot="box0000-snap-1"' in r.text and "box0001-snap" not in r.text
    assert c.get("/labelling/box0001-snap-1.jpg").status_code == 404
    img = c.get("/labelling/box0000-snap-1.jpg")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert c.post("/labelling/box0001-snap-1", data={"label": "cat", "csrf_token": token}).status_code == 404
    r = c.post("/labelling/box0000-snap-1", data={"label": "cat", "csrf_token": token})
    assert r.status_code == 200 and "Labelled box0000:1 as cat" in r.text
    assert 'data-snapshot="box0000-snap-1"' not in r.text
    fb = FleetStore(cfg.fleet_store).feedback()
    assert [(f.device, f.seq, f.label, f.actor) for f in fb] == [("box0000", 1, "cat", "engineer")]
    r = c.get("/quality")
    assert 'id="labels-total">1 labelled frame' in r.text
    assert AuditLog(cfg.paths.registry_db).entries(subject="prediction:box0000:1")[0].actor == "engineer"
    bad = c.post("/labelling/box0000-snap-6", data={"label": "horse", "csrf_token": token})
    assert bad.status_code == 400 and "not one of" in bad.text


def test_viewer_cannot_label(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = sign_in(c, "viewer")
    assert c.post("/labelling/box0000-snap-1", data={"label": "cat", "csrf_token": token}).status_code == 403


def test_models_page_and_audit_chain(cfg) -> None:  # type: ignore[no-untyped-def]
    with Registry(cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version="v1",
                gate_passed=True,
                package_dir="",
                tarball="",
                tarball_sha256="",
                metrics={"accuracy": 0.97, "ece": 0.02},
            )
        )
        reg.register_model(
            ModelRecord(
                version="v2",
                gate_passed=False,
                package_dir="",
                tarball="",
                tarball_sha256="",
                gate={"failures": ["accuracy 0.80 < 0.90"]},
            )
        )
    AuditLog(cfg.paths.registry_db).append("pipeline", "register", "model:v1", {})
    report = cfg.paths.reports_dir / "v1" / "abcdef0123456789" / "evaluation.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body>confusion matrix here</body></html>")
    c = client_for(cfg)
    sign_in(c, "viewer")
    page = c.get("/models/v1").text
    assert "re-evaluation on dataset abcdef0123456789" in page and "pipeline: register" in page
    assert "confusion matrix here" in c.get("/models/v1/report/0").text
    assert c.get("/models/v1/report/1").status_code == 404
    r = c.get("/models")
    assert 'data-version="v1"' in r.text and "accuracy 0.970" in r.text and "✖ failed" in r.text
    r = c.get("/models/v2")
    assert "accuracy 0.80 &lt; 0.90" in r.text and "Only approvers decide" in r.text
    # the gate approval checks (this server's [gate]) with its thresholds: v1 stored no recall
    # figures, so it cannot pass it whatever the trainer said
    assert "thresholds: min_accuracy 0.97" in page and "max_ece 0.05" in page
    assert "no stored per_class, recall_gap: evaluate the model first" in page
    r = c.get("/audit")
    assert "Chain verified" in r.text and "model:v1" in r.text
    # tamper with the file directly: the page must say the chain is broken
    import sqlite3

    conn = sqlite3.connect(cfg.paths.registry_db)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit_log SET actor='mallory' WHERE id=1")
    conn.commit()
    conn.close()
    viewer = client_for(cfg)
    sign_in(viewer, "viewer")
    page = viewer.get("/audit").text
    assert "Chain BROKEN at entry 1" in page


def test_lineage_from_prediction_and_model(cfg) -> None:  # type: ignore[no-untyped-def]
    with Registry(cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version="m1",
                gate_passed=True,
                package_dir="",
                tarball="",
                tarball_sha256="",
                lineage={"code_commit": "abc123"},
            )
        )
    c = client_for(cfg)
    sign_in(c, "viewer")
    r = c.get("/lineage", params={"q": "box0000"})
    assert 'href="/lineage?q=box0000%3A20"' in r.text  # recent predictions of a device to start from
    r = c.get("/lineage", params={"q": "box0000:2"})
    assert 'id="lineage-result"' in r.text and "abc123" in r.text and "park1" in r.text
    r = c.get("/lineage", params={"q": "m1"})
    assert "abc123" in r.text
    r = c.get("/lineage", params={"q": "box0000:99999"})
    assert "not in the fleet store" in r.text


def test_feedback_api_needs_role_and_token(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = sign_in(c, "viewer")
    body = {"prediction_id": "box0000:3", "label": "dog"}
    assert c.post("/api/feedback", json=body, headers={"X-CSRF-Token": token}).status_code == 403
    c2 = client_for(cfg)
    token = sign_in(c2, "engineer")
    assert c2.post("/api/feedback", json=body).status_code == 403  # no token
    r = c2.post("/api/feedback", json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 201 and r.json()["actor"] == "engineer"


def test_lineage_page_is_sections_and_tables_and_audit_details_wrap(
    cfg: CloudConfig, tmp_path: Path, pets_sample: Path
) -> None:
    """The lineage page was an 11,000-px raw dump of nested lists; the audit page cut off its
    details column. Now: one section per hop, files folded in a table, details that wrap."""
    from cloud.data.config import IngestConfig
    from cloud.data.ingest import ingest
    from tests.test_ingest import make_lake

    lake = make_lake(pets_sample, tmp_path / "lake")
    with Registry(cfg.paths.registry_db) as reg:
        ds = ingest(lake, reg, cfg.paths.datasets_dir, IngestConfig(), show_progress=False)
        reg.register_model(
            ModelRecord(
                version="m2",
                gate_passed=True,
                package_dir="/pkgs/m2",
                tarball="",
                tarball_sha256="",
                dataset_id=ds.dataset_version,
                metrics={"accuracy": 0.981, "ece": 0.02},
                lineage={
                    "code": {"commit": "feedbeef", "dirty": False, "packages": {"torch": "2.14.1"}},
                    "parameters": {"head": {"lr": 0.001, "dropout": 0.2}, "seed": 7},
                },
            )
        )
        reg.audit.append("qa-anna", "approve", "model:m2", {"reason": "x" * 300, "signed_by": ["a" * 64]})
    c = client_for(cfg)
    sign_in(c, "viewer")
    page = c.get("/lineage", params={"q": "m2"}).text
    for heading in ("Model m2", "Parameters", f"Dataset {ds.dataset_version[:16]}", "Audit entries"):
        assert f">{heading}" in page, heading
    assert "<dt>head.lr</dt><dd>0.001</dd>" in page  # flattened, not a nested dump
    assert "<details><summary>24 files</summary>" in page and "<th>SHA-256</th>" in page
    assert "<li><dl" not in page and "{&#39;" not in page
    audit = c.get("/audit").text
    cell = audit.split('<td class="wrap details">')[1].split("</td>")[0]
    assert '<span class="kvline"><b>signed_by</b> ' + "a" * 64 in cell


def test_fleet_page_sorts_every_device_by_a_live_figure_across_pages(tmp_path: Path) -> None:
    """Sorting by CPU reads every device's newest sample in one query (cloud/fleet/store.py
    ``latest_figures``) and pages the result; the page reads full rows for its own devices only."""
    cfg = make_cfg(tmp_path, dashboard={"page_size": 10}, fleet={"heartbeat_timeout_s": 600})
    seed_users(cfg)
    seed_fleet(cfg, devices=25, hours=0.1, step_s=60, hot=(7,))
    with FleetStore(cfg.fleet_store) as fs:
        latest = {d.device: fs.latest_telemetry(d.device) for d in fs.devices()}
    cpu = {name: t.cpu_percent for name, t in latest.items() if t is not None}
    assert len(cpu) == 25
    ranked = sorted(cpu, key=lambda d: (cpu[d], d), reverse=True)
    c = client_for(cfg)
    sign_in(c, "viewer")
    shown: list[str] = []
    for page in (1, 2, 3):
        r = c.get("/", params={"sort": "cpu", "desc": "true", "page": page})
        assert r.status_code == 200 and 'id="count-online">25<' in r.text
        shown += [part.split('"', 1)[0] for part in r.text.split('data-device="')[1:]]
    assert shown == ranked
    r = c.get("/", params={"sort": "temp", "desc": "true"})
    assert r.text.split('data-device="')[1].startswith('box0007"')  # the hot one, 85 °C
    assert "cam1: streaming" in r.text  # full rows and the newest sample's cameras for the page
