"""The stores return typed records, and the same records on SQLite and on a real PostgreSQL 15.

The same messages go through each backend's own writer; every read of ``FleetStore`` and
``AlertStore`` must then answer with equal records (PostgreSQL's partition ``day`` column, for
one, used to leak into its prediction rows), and the records print as the dicts ``--json`` and
the HTTP API always printed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.fleet.backends import open_writer
from cloud.fleet.backends.target import FleetTarget, PgTarget
from cloud.fleet.records import (
    DeadLetter,
    Device,
    DeviceBrief,
    DriftResult,
    Feedback,
    Gap,
    Labelled,
    LiveFigures,
    ModelState,
    Outcomes,
    Prediction,
    StatusEvent,
    TelemetryPoint,
    TelemetryRow,
    TrendPoint,
)
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import Incoming
from cloud.governance.alerts import AlertStore
from cloud.governance.records import AlertEvent, StoredAlert
from cloud.governance.rules import Finding
from cloud.packaging.lineage import ModelLineage
from shared.cli import main
from shared.protocol import (
    DeviceStatus,
    Kind,
    PredictionBatch,
    Telemetry,
    Topics,
    parse_topic,
)
from shared.protocol import (
    ModelState as ModelStateMsg,
)
from shared.protocol import (
    Prediction as PredictionMsg,
)
from shared.records import jsonable

T0 = 1_800_000_000.0


def _incoming(device: str, kind: Kind, msg: Any, received: float) -> Incoming:
    return Incoming(parse_topic(Topics.device("park1", device, kind)), msg, received)


def _fill(target: FleetTarget) -> None:
    """The same traffic of two boxes, through the backend's own ingest writer."""
    preds = [
        PredictionMsg(seq=s, ts=T0 + s, camera="cam1", label=lab, confidence=0.9, model_version="m1")
        for s, lab in ((1, "cat"), (2, "dog"), (3, "none"), (6, "cat"))  # 4-5 lost on the way
    ]
    tel = Telemetry(
        device="b1", site="park1", ts=T0 + 10, seq=7, cpu_percent=12.5, memory_percent=40.0,
        disk_percent=30.0, uptime_process_s=5.0, uptime_system_s=50.0,
    )  # fmt: skip
    w = open_writer(target)
    try:
        w.write(
            [
                _incoming(
                    "b1", Kind.STATUS, DeviceStatus(device="b1", site="park1", state="online", ts=T0), T0
                ),
                _incoming(
                    "b1",
                    Kind.MODEL_STATE,
                    ModelStateMsg(device="b1", site="park1", state="active", version="m1", ts=T0 + 1),
                    T0 + 1,
                ),
                _incoming(
                    "b1",
                    Kind.PREDICTIONS,
                    PredictionBatch(device="b1", site="park1", predictions=preds),
                    T0 + 7,
                ),
                _incoming("b1", Kind.TELEMETRY, tel, T0 + 10),
                _incoming(
                    "b2", Kind.STATUS, DeviceStatus(device="b2", site="park1", state="offline", ts=T0), T0
                ),
            ]
        )
    finally:
        w.db.close()


DRIFT_ROW: dict[str, Any] = {
    **dict(run_id="r1", ts=T0 + 20, window_start=T0, window_end=T0 + 20, model_version="m1"),
    **dict(site="park1", device="", n=4, psi=0.1, js=None, ks=None, ks_p=None, wasserstein=None),
    **dict(abstain_rate=0.0, flag_rate=0.0, est_accuracy=0.9, accuracy=None, n_labels=1, recall_gap=None),
    **dict(drifted=0, reasons=[], details={"modes": {}}),
}


def _reads(fs: FleetStore) -> dict[str, Any]:
    """Every read of the store (the 17 that return records), on data ``_fill`` wrote."""
    labelled = fs.add_feedback(fs.prediction("b1:2"), "cat", actor="qa", comment="a cat after all")
    fs.add_drift([DRIFT_ROW])
    fs.execute(
        "INSERT INTO dead_letters(worker, topic, kind, reason, received_ts, payload) VALUES (?,?,?,?,?,?)",
        ("w1", "parkwatch/v1/park1/b1/predictions", "malformed", "not JSON", T0, b"\xff{"),
    )
    # The feedback's own time is when the label was given: the same on both for the comparison.
    return {
        "devices": fs.devices(),
        "devices_site": fs.devices(site="park1"),
        "devices_brief": fs.devices_brief(),
        "devices_named": sorted(fs.devices_named(["b2", "b1", "nobody"]), key=lambda d: d.device),
        "device": fs.device("b1"),
        "status_events": fs.status_events("b1"),
        "model_states": fs.model_states("b1"),
        "telemetry": fs.telemetry("b1"),
        "telemetry_rows": fs.telemetry_rows("b1"),
        "latest_telemetry": fs.latest_telemetry("b1"),
        "latest_telemetry_of": fs.latest_telemetry_of(["b1", "b2"]),
        "latest_figures": fs.latest_figures(),
        "telemetry_of": fs.telemetry_of(["b1", "b2"], since=T0 - 1),
        "predictions": fs.predictions(device="b1"),
        "prediction": fs.prediction("b1:6"),
        "outcomes": fs.outcomes(device="b1", since=T0),
        "outcomes_by_device": fs.outcomes_by_device(["b1", "b2"], since=T0),
        "gaps": fs.gaps("b1"),
        "add_feedback": dataclasses.replace(labelled, ts=0.0),
        "feedback": [dataclasses.replace(f, ts=0.0) for f in fs.feedback()],
        "drift_results": fs.drift_results(),
        "latest_drift": fs.latest_drift(),
        "dead_letters": fs.dead_letters(),
    }


TYPES: dict[str, type] = {
    "devices": Device, "devices_site": Device, "devices_brief": DeviceBrief,
    "devices_named": Device, "device": Device, "status_events": StatusEvent,
    "model_states": ModelState, "telemetry": TelemetryPoint, "telemetry_rows": TelemetryRow,
    "latest_telemetry": TelemetryRow, "predictions": Prediction, "prediction": Prediction,
    "outcomes": Outcomes, "gaps": Gap, "add_feedback": Labelled, "feedback": Feedback,
    "drift_results": DriftResult, "latest_drift": DriftResult, "dead_letters": DeadLetter,
}  # fmt: skip


def test_both_fleet_backends_return_the_same_records(tmp_path: Path, pg_url: str) -> None:
    answers = {}
    for name, target in (("sqlite", tmp_path / "fleet.db"), ("postgresql", PgTarget(pg_url))):
        _fill(target)
        with FleetStore(target) as fs:
            answers[name] = _reads(fs)
    lite, pg = answers["sqlite"], answers["postgresql"]
    for key, want in TYPES.items():
        got = lite[key]
        items = got if isinstance(got, list) else [got]
        assert items and all(type(x) is want for x in items), (key, got)
        assert pg[key] == got, key
    assert all(type(o) is Outcomes for o in lite["outcomes_by_device"].values())
    assert pg["outcomes_by_device"] == lite["outcomes_by_device"]
    # The fleet page's reads of many devices at once (one query each): records too, keyed by device.
    for key, want in (("latest_telemetry_of", TelemetryRow), ("latest_figures", LiveFigures)):
        assert lite[key] and all(type(v) is want and v.device == k for k, v in lite[key].items()), key
        assert pg[key] == lite[key], key
    assert lite["latest_telemetry_of"]["b1"] == lite["latest_telemetry"]
    assert lite["latest_figures"]["b1"].cpu_percent == lite["latest_telemetry"].cpu_percent
    trend = lite["telemetry_of"]["b1"]
    assert trend and all(type(t) is TrendPoint for t in trend) and pg["telemetry_of"] == lite["telemetry_of"]
    assert [t.ts for t in trend] == [t.ts for t in lite["telemetry"]]
    assert lite["devices_named"] == sorted(lite["devices"], key=lambda d: d.device)
    assert [(b.device, b.health) for b in lite["devices_brief"]] == [
        (d.device, d.health) for d in lite["devices"]
    ]
    # What the data says, so equal answers are also right ones.
    assert [p.seq for p in lite["predictions"]] == [6, 3, 2, 1] and lite["prediction"].id == "b1:6"
    assert [(g.first_seq, g.last_seq, g.missing) for g in lite["gaps"]] == [(4, 5, 2)]
    assert lite["device"].status == "online" and lite["device"].max_seq == 6
    assert lite["outcomes"].pets == {"cat": 2, "dog": 1} and lite["outcomes"].none == 1
    assert lite["telemetry_rows"][0].body["cpu_percent"] == 12.5 and lite["telemetry"][0].cpu_percent == 12.5
    assert lite["dead_letters"][0].payload == "\ufffd{" and lite["dead_letters"][0].bytes == 2
    assert lite["feedback"][0].label == "cat" and lite["feedback"][0].predicted == "dog"


def test_records_print_as_the_rows_they_were(tmp_path: Path) -> None:
    """``--json`` and the API print a record as the dict the store used to return: the row's
    columns under their names (``from`` for ``Outcomes.from_``), JSON columns decoded."""
    _fill(tmp_path / "fleet.db")
    with FleetStore(tmp_path / "fleet.db") as fs:
        raw = fs.query("SELECT * FROM predictions WHERE device='b1' AND seq=6")[0]
        assert fs.prediction("b1:6").to_dict() == {**raw, "id": "b1:6"}
        assert list(fs.prediction("b1:6").to_dict()) == [*raw, "id"]  # column order kept
        assert fs.device("b1").to_dict() == fs.query("SELECT * FROM devices WHERE device='b1'")[0]
        out = jsonable({"o": fs.outcomes(device="b1", since=T0 + 1800)})
        assert out["o"]["from"] == T0 // 3600 * 3600 + 0.0 and "from_" not in out["o"]
        labelled = fs.add_feedback(fs.prediction("b1:1"), "neither", actor="qa")
        assert labelled.label == "none" and labelled.to_dict()["prediction_id"] == "b1:1"
        with pytest.raises(dataclasses.FrozenInstanceError):
            labelled.label = "dog"  # type: ignore[misc]


def test_a_row_missing_a_column_is_an_error_naming_it() -> None:
    with pytest.raises(KeyError, match="needs column 'detected_ts'"):
        Gap.from_row({"id": 1, "device": "b", "site": "p", "first_seq": 1, "last_seq": 2, "cause": "x"})
    with pytest.raises(KeyError, match=r"needs column\(s\) \['missing'\]"):
        Gap.from_rows(["id", "device", "site", "first_seq", "last_seq", "cause", "detected_ts"], [])


def _alert_reads(target: FleetTarget) -> tuple[StoredAlert, list[StoredAlert], list[AlertEvent]]:
    with AlertStore(target) as st:
        a, new = st.raise_finding(Finding("overheating", "park1", "hot", device="b1"), "critical", "qa")
        assert new
        st.record_action(a.id, {"action": "notify", "ok": True}, "qa")
        got = st.ack(a.id, "olga", "fan replaced")
        listed = st.list(active_only=True)
        events = st.events(a.id)
        by_key = st.active_by_key({"overheating"})
    assert by_key == {got.key: got}
    times: dict[str, Any] = {
        "opened_ts": 0.0,
        "updated_ts": 0.0,
        "last_seen_ts": 0.0,
        "acked_ts": 0.0,
        "id": "x",
    }
    fixed: Callable[[StoredAlert], StoredAlert] = lambda r: dataclasses.replace(  # noqa: E731
        r, **times, actions=[{**x, "ts": 0} for x in r.actions]
    )
    return fixed(got), [fixed(r) for r in listed], [dataclasses.replace(e, ts=0.0) for e in events]


def test_both_alert_backends_return_the_same_records(tmp_path: Path, pg_url: str) -> None:
    lite = _alert_reads(tmp_path / "fleet.db")
    pg = _alert_reads(PgTarget(pg_url))
    assert lite == pg
    alert, listed, events = lite
    assert type(alert) is StoredAlert and alert.state == "acknowledged" and alert.acked_by == "olga"
    assert alert.actions == [{"action": "notify", "ok": True, "ts": 0}] and listed == [alert]
    assert [(e.actor, e.event) for e in events] == [("qa", "open"), ("qa", "action:notify"), ("olga", "ack")]


def test_alerts_list_json_prints_the_stored_row(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "cloud"}"\n')
    (tmp_path / "cloud").mkdir()
    with AlertStore(tmp_path / "cloud" / "fleet.db") as st:
        a, _ = st.raise_finding(Finding("overheating", "park1", "hot", device="b1"), "critical", "qa")
    r = CliRunner().invoke(main, ["cloud", "alerts", "list", "--json", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [a.to_dict()]
    assert r.output == json.dumps([a.to_dict()], indent=2, sort_keys=True, default=str) + "\n"


def test_lineage_keys_are_read_under_one_name_whatever_the_record_age() -> None:
    """Records written before ``base_lineage`` nested the code keys named them differently."""
    old = ModelLineage.read({"code_commit": "abc123", "code_dirty": True, "package_versions": {"torch": "2"}})
    new = ModelLineage.read(
        {
            "code": {"commit": "abc123", "dirty": True, "repo": "/r"},
            "packages": {"torch": "2"},
            "run_id": "r1",
        }
    )
    assert (
        (old.commit, old.dirty, old.packages)
        == (new.commit, new.dirty, new.packages)
        == ("abc123", True, {"torch": "2"})
    )
    assert old.code == {"commit": "abc123", "dirty": True, "packages": {"torch": "2"}}
    assert new.run_id == "r1" and old.run_id is None and ModelLineage.read(None).commit is None


def test_release_results_print_as_the_dicts_they_replaced() -> None:
    """The release channel's results keep the keys and order ``--json`` printed before records."""
    from cloud.release.records import Provisioned, Revoked, RolledBack

    p = Provisioned(None, None, site="park1", device="b1", group="staging", username="b1", secret_file="/s")
    assert list(p.to_dict()) == ["site", "device", "group", "username", "secret_file"]  # no broker files yet
    r = Revoked("/p", "/a", site="park1", device="b1")
    assert r.to_dict() == {"site": "park1", "device": "b1", "revoked": True, "passwd": "/p", "acl": "/a"}
    row: dict[str, Any] = dict(id=3, version="1.0.0", group="g", stage="staging", previous_version=None)
    row |= dict(kind="rollback", actor="a", reason="bad", status="running", status_reason=None)
    row |= dict(started_ts=1.0, finished_ts=None)
    rb = RolledBack(**row, devices_total=2, devices_active=0, rolled_back="2.0.0", notified=True)
    assert list(jsonable(rb))[-3:] == ["devices_active", "rolled_back", "notified"]


def test_release_channel_reads_print_as_the_dicts_they_replaced(tmp_path: Path) -> None:
    """``keys init``/``rotate``, the audit checkpoint, ``rollout status`` and the release store's
    device lists return records now; their JSON is the dict each returned before, built here the
    old way from the same repository and rows."""
    from cloud.release import checkpoint
    from cloud.release.channel import ReleaseChannel
    from cloud.release.records import AuditCheckpoint, KeysInitialised, KeysRotated, ReleaseStatus
    from cloud.release.store import DeviceState, ProvisionedDevice
    from shared.broker import free_port
    from shared.protocol import ModelState as BoxModelState
    from tests.release_support import cloud_config, mqtt_cfg

    ch = ReleaseChannel(cloud_config(tmp_path / "cloud", mqtt_cfg(free_port())), notify=lambda *a: True)
    try:
        init = ch.keys_init("ops", allow_approver_key_on_server=True)
        assert isinstance(init, KeysInitialised)
        assert jsonable(init) == {
            "warnings": init.warnings,
            "created": init.created,
            "keys_dir": str(ch.keys.keys_dir),
            "approver_keys_dir": str(ch.keys.approver_keys_dir),
            "trusted_root": str(ch.repo.metadata_dir / "root.json"),
            **ch.repo.status(),
        }
        assert len(init.created) == 6 and init.warnings[0].startswith("WARNING: the approver key")

        ch.provision_device("park1", "box1", "staging", tmp_path / "box1.secret", "ops")
        ch.states.record(BoxModelState(site="park1", device="box1", group="staging", state="failed", ts=5.0))
        devices = ch.states.provisioned()
        assert all(isinstance(d, ProvisionedDevice) for d in devices)
        rows = list(ch.states.db.table("devices").rows_where("revoked = 0", order_by="site, device"))
        assert [jsonable(d) for d in devices] == rows and list(jsonable(devices[0])) == list(rows[0])
        assert devices[0].public() == {k: v for k, v in rows[0].items() if k != "pw_hash"}
        states = ch.states.states()
        assert all(isinstance(s, DeviceState) for s in states)
        state_rows = list(ch.states.db.table("device_models").rows_where(order_by="site, device"))
        assert [jsonable(s) for s in states] == state_rows and list(jsonable(states[0])) == list(
            state_rows[0]
        )

        rotated = ch.keys_rotate("timestamp", "ops", "drill")
        assert isinstance(rotated, KeysRotated)
        assert list(jsonable(rotated)) == ["role", "retired", "new", "root_version"]
        assert rotated.role == "timestamp" and rotated.root_version == ch.repo.root().signed.version

        cp = ch.checkpoint_audit(force=True)
        assert isinstance(cp, AuditCheckpoint)
        signed = json.loads((ch.repo.dir / checkpoint.FILE).read_text())["signed"]
        assert jsonable(cp) == {k: signed[k] for k in ("entries", "head_id", "head_hash", "ts")}
        assert ch.checkpoint_audit() is None  # the head did not move

        status = ch.status("staging")
        assert isinstance(status, ReleaseStatus)
        assert jsonable(status) == {
            "groups": {
                "staging": {
                    "target_version": None,
                    "devices": 1,
                    "active": 0,
                    "by_version": {"none": 1},
                    "by_state": {"failed": 1},
                    "failed": [{"device": "park1/box1", "reason": None, "ts": 5.0, "version": None}],
                    "rollout": None,
                    "device_states": state_rows,
                }
            },
            "repository": ch.repo.status(),
        }
    finally:
        ch.close()
