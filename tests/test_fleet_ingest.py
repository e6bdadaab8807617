"""Fleet ingest against a real Mosquitto and a real SQLite file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.analysis.health import check_fleet
from cloud.cli import cloud
from cloud.config import CloudConfig
from cloud.fleet.errors import FleetError
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import CAUSE_LOST
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, Topics
from tests.fleetutil import cloud_cfg, only_backends, wait_for
from tests.release_support import write_cloud_toml
from tests.simdevice import SimDevice


@pytest.fixture
def cfg(tmp_path: Path, broker: EmbeddedBroker):  # type: ignore[no-untyped-def]
    return cloud_cfg(tmp_path, broker)


def started(cfg) -> FleetIngest:  # type: ignore[no-untyped-def]
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10), "ingest did not connect to the broker"
    return ing


def test_stores_all_kinds_and_a_duplicate_once(cfg, broker: EmbeddedBroker) -> None:  # type: ignore[no-untyped-def]
    ing = started(cfg)
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="box1").connect()
    try:
        preds = dev.predict(300, batch_size=30)
        dev.telemetry(cpu_percent=42.0)
        dev.model_state("active")
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 300, what="300 predictions stored")
        wait_for(lambda: store.latest_telemetry("box1") is not None, what="telemetry")
        # The same batch delivered again (a device resending after a lost PUBACK).
        dev.send(preds[:30], batch_size=30)
        dev.flush()
        wait_for(lambda: store.counters().get("duplicates.predictions") == 30, what="duplicates counted")
        assert store.prediction_count() == 300
        d = store.device("box1")
        assert d.status == "online" and d.site == "park1" and d.max_seq == 300
        assert d.update_state == "active" and d.model_version == "m1"
        latest = store.latest_telemetry("box1")
        assert latest is not None and latest.cpu_percent == 42.0
        assert store.gaps() == []
        p = store.prediction("box1:7")
        assert p.seq == 7 and p.label == preds[6].label
    finally:
        dev.disconnect()
        ing.stop()


def test_gap_recorded_when_predictions_are_really_lost_and_closed_when_they_arrive(
    cfg: CloudConfig, broker: EmbeddedBroker
) -> None:
    ing = started(cfg)
    dev = SimDevice("127.0.0.1", broker.port, device="box2").connect()
    try:
        dev.predict(100)
        lost = dev.make_predictions(20)  # numbered 101..120, held back
        dev.predict(100)
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 200, what="200 stored")
        gaps = store.gaps("box2")
        assert [(g.first_seq, g.last_seq, g.missing, g.cause) for g in gaps] == [(101, 120, 20, CAUSE_LOST)]
        # Health reports the gap only once it is older than fleet.gap_grace_s (late rows may fill it).
        acfg, now = cfg.analysis, time.time()
        fresh = check_fleet(store, acfg, 60, now, gap_grace_s=30)
        assert [f.rule for h in fresh for f in h.findings] == []
        later = check_fleet(store, acfg, 3600, now + 31, gap_grace_s=30)
        assert [f.rule for h in later for f in h.findings] == ["ingest_gap"]
        # Part of the backlog turns up late (an outbox resending): the gap shrinks and splits.
        dev.send([lost[0], lost[5]], batch_size=10)
        dev.flush()
        wait_for(lambda: len(store.gaps("box2")) == 2, what="gap split")
        assert [(g.first_seq, g.last_seq) for g in store.gaps("box2")] == [(102, 105), (107, 120)]
        dev.send(lost[1:5] + lost[6:], batch_size=50)
        dev.flush()
        wait_for(lambda: store.gaps("box2") == [], what="gap closed")
        assert store.prediction_count() == 220
    finally:
        dev.disconnect()
        ing.stop()


def test_bad_payloads_are_counted_and_never_crash_ingest(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = cloud_cfg(tmp_path, broker, mqtt={"max_payload_bytes": 4096})
    ing = started(cfg)
    dev = SimDevice("127.0.0.1", broker.port, device="box3").connect(status=False)
    try:
        t = dev.topic(Kind.PREDICTIONS)
        dev.publish_raw(t, b"\xff\xfe not json")
        dev.publish_raw(t, b"[1, 2, 3]")
        dev.publish_raw(t, b'{"schema": 99, "device": "box3"}')
        dev.publish_raw(t, b'{"schema": 1, "device": "box3", "site": "park1", "predictions": []}')
        dev.publish_raw(t, b'{"schema": 1, "x": "' + b"a" * 5000 + b'"}')
        dev.publish_raw(
            Topics.device("park1", "other", Kind.PREDICTIONS), _batch_json(dev)
        )  # names box3 on another device's topic
        dev.predict(10)
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 10, what="valid batch stored after bad ones")
        wait_for(
            lambda: sum(v for k, v in store.counters().items() if k.startswith("rejected.")) >= 6,
            what="rejects persisted",
        )
        rej = ing.stats()["rejected"]
        assert rej == {"malformed": 2, "unsupported_schema": 1, "invalid": 2, "too_large": 1}
        assert ing.connected
    finally:
        dev.disconnect()
        ing.stop()


def _batch_json(dev: SimDevice) -> bytes:
    from shared.protocol import PredictionBatch, encode

    return encode(PredictionBatch(device=dev.device, site=dev.site, predictions=dev.make_predictions(1)))


def test_restart_in_the_middle_of_a_burst_loses_nothing(cfg, broker: EmbeddedBroker) -> None:  # type: ignore[no-untyped-def]
    ing = started(cfg)
    dev = SimDevice("127.0.0.1", broker.port, device="box4").connect()
    store = FleetStore(cfg.fleet_store)
    try:
        dev.predict(40_000, batch_size=10)
        wait_for(lambda: ing.accepted > 50, what="ingest busy with the burst")
        ing.stop()  # mid-burst: the rest (and whatever was in flight unacknowledged) waits in the broker
        accepted = ing.accepted
        dev.flush()
        assert accepted < 4_000, "the burst was over before the restart; make it longer"
        ing = started(cfg)  # same client id: the persistent session resumes
        wait_for(lambda: store.prediction_count() == 40_000, timeout=120, what="all 40,000 stored")
        assert store.gaps() == []
        assert store.device("box4").max_seq == 40_000
    finally:
        dev.disconnect()
        ing.stop()


@pytest.mark.slow
def test_50000_message_qos1_burst_to_one_ingest_is_not_dropped(cfg, broker: EmbeddedBroker) -> None:  # type: ignore[no-untyped-def]
    """NOTES.md: Mosquitto's defaults delivered 4,431 of such a burst. The shipped config must not."""
    ing = started(cfg)
    ing.stop()  # session now exists in the broker; the whole burst has to be queued for it
    dev = SimDevice("127.0.0.1", broker.port, device="box5").connect()
    store = FleetStore(cfg.fleet_store)
    try:
        dev.send(dev.make_predictions(50_000), batch_size=1)
        dev.flush(timeout=300)
        ing = started(cfg)
        wait_for(lambda: store.prediction_count() == 50_000, timeout=300, what="all 50,000 stored")
        assert store.gaps() == []
    finally:
        dev.disconnect()
        ing.stop()


def test_broker_defaults_really_drop_and_the_loss_shows_up_as_a_gap(tmp_path: Path) -> None:
    """The control for the test above: Mosquitto's default queue limits lose messages silently;
    ingest cannot stop that, but it records the loss as a gap once the device speaks again."""
    with EmbeddedBroker(tmp_path / "defaults", extra_conf="max_queued_messages 1000\n") as b:
        cfg = cloud_cfg(tmp_path, b)
        ing = started(cfg)
        ing.stop()
        dev = SimDevice("127.0.0.1", b.port, device="box6").connect(status=False)
        store = FleetStore(cfg.fleet_store)
        try:
            dev.predict(5_000, batch_size=1)
            dev.flush()
            ing = started(cfg)
            wait_for(lambda: store.prediction_count() >= 1000, what="the queued part")
            dev.predict(1, batch_size=1)  # the next message reveals the hole
            dev.flush()
            wait_for(lambda: store.gaps("box6"), what="a gap")
            stored = store.prediction_count()
            assert stored < 5_001
            assert sum(g.missing for g in store.gaps("box6")) == 5_001 - stored
            assert all(g.cause == CAUSE_LOST for g in store.gaps("box6"))
        finally:
            dev.disconnect()
            ing.stop()


@only_backends("sqlite")  # by the box's clock; PostgreSQL drops arrival days (test_fleet_postgres.py)
def test_retention_prunes_old_rows_but_keeps_labelled_predictions(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker, fleet={"retention_days": 1.0, "retention_interval_s": 3600})
    ing = started(cfg)  # prunes once at start-up, on an empty database
    dev = SimDevice("127.0.0.1", broker.port, device="box7").connect()
    store = FleetStore(cfg.fleet_store)
    try:
        old = dev.make_predictions(50, ts=time.time() - 3 * 86400)
        dev.send(old)
        dev.telemetry(ts=time.time() - 3 * 86400)
        dev.predict(10)
        dev.telemetry()
        dev.flush()
        wait_for(lambda: store.prediction_count() == 60, what="stored")
        wait_for(lambda: len(store.telemetry("box7")) == 2, what="telemetry stored")
        store.add_feedback(store.prediction(f"box7:{old[0].seq}"), "cat", actor="qa")
        ing.stop()
        ing = started(cfg)  # the next prune (at start-up) applies the 1-day retention
        wait_for(lambda: store.prediction_count() == 11, what="old predictions pruned")
        assert {p.seq for p in store.predictions(device="box7")} == {1, *range(51, 61)}
        assert len(store.telemetry("box7")) == 1
    finally:
        dev.disconnect()
        ing.stop()


def test_two_workers_share_the_stream_and_store_each_prediction_once(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    w1 = FleetIngest(cfg, client_id="ingest-a")
    w2 = FleetIngest(cfg, client_id="ingest-b")
    for w in (w1, w2):
        w.start()
        assert w.wait_connected(10)
    devs = [SimDevice("127.0.0.1", broker.port, device=f"box-{i}", seed=i).connect() for i in range(3)]
    store = FleetStore(cfg.fleet_store)
    try:
        for d in devs:
            d.predict(2_000, batch_size=20)
        for d in devs:
            d.flush()
        wait_for(lambda: store.prediction_count() == 6_000, timeout=60, what="6,000 stored")
        # Both workers took part, and batches of one device that crossed between them left no gap.
        # Each worker counts its rows just after the commit that made them visible.
        wait_for(
            lambda: w1.stats()["stored_predictions"] + w2.stats()["stored_predictions"] == 6_000,
            what="both workers' counts",
        )
        assert w1.stats()["stored_predictions"] > 0 and w2.stats()["stored_predictions"] > 0
        wait_for(lambda: store.gaps() == [], what="no gaps left")
    finally:
        for d in devs:
            d.disconnect()
        w1.stop()
        w2.stop()


def test_a_retired_worker_hands_its_queued_share_back_and_its_session_ends(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    keep = FleetIngest(cfg, client_id="ingest-keep")
    gone = FleetIngest(cfg, client_id="ingest-gone")
    for w in (keep, gone):
        w.start()
        assert w.wait_connected(10)
    twin = FleetIngest(cfg, client_id="ingest-keep")
    with pytest.raises(FleetError, match="already runs here"):  # would take keep's session over
        twin.start()
    gone.stop()  # stopped for good, but its persistent session still takes a share of the stream
    dev = SimDevice("127.0.0.1", broker.port, device="box-ret").connect()
    store = FleetStore(cfg.fleet_store)
    try:
        dev.predict(2_000, batch_size=20)
        dev.flush()
        wait_for(lambda: keep.accepted >= 40, what="the remaining worker busy")
        time.sleep(1.0)
        assert store.prediction_count() < 2_000  # part of the stream waits in the stopped session
        toml = write_cloud_toml(cfg, tmp_path / "cloud.toml")
        r = CliRunner().invoke(cloud, ["inbox", "--retire", "ingest-keep", "--config", str(toml)])
        assert r.exit_code == 1 and "is running here: stop it first" in r.output  # no session takeover
        r = CliRunner().invoke(
            cloud, ["inbox", "--retire", "ingest-gone", "--timeout", "60", "--json", "--config", str(toml)]
        )
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert out["retired"]["session"] == "ended" and out["retired"]["received"] > 0
        assert [w["worker"] for w in out["workers"]] == ["ingest-keep"]  # its empty inbox is gone
        r = CliRunner().invoke(cloud, ["inbox", "--retire", "ingest-typo", "--config", str(toml)])
        assert r.exit_code == 1 and "no inbox for worker 'ingest-typo'" in r.output
        wait_for(lambda: store.prediction_count() == 2_000, what="all 2,000 stored")
        dev.predict(1_000, batch_size=20)  # from now on the remaining worker takes everything
        dev.flush()
        wait_for(lambda: store.prediction_count() == 3_000, what="all 3,000 stored by the one left")
        wait_for(lambda: store.gaps() == [], what="no gaps")
    finally:
        dev.disconnect()
        keep.stop()
        store.close()


def test_queued_messages_survive_a_broker_restart(tmp_path: Path) -> None:
    # EmbeddedBroker keeps Mosquitto running as the current user, so its persistence file is
    # really written; without that, queues would silently vanish across this restart.
    with EmbeddedBroker(tmp_path / "broker") as b:
        cfg = cloud_cfg(tmp_path, b)
        ing = started(cfg)
        ing.stop()
        dev = SimDevice("127.0.0.1", b.port, device="box8").connect(status=False)
        try:
            dev.predict(3_000, batch_size=10)
            dev.flush()
        finally:
            dev.client.disconnect()
            dev.client.loop_stop()
        b.restart()  # clean stop: Mosquitto writes its persistence file, queued messages included
        assert (tmp_path / "broker" / "mosquitto.db").exists()
        ing = started(cfg)
        store = FleetStore(cfg.fleet_store)
        try:
            wait_for(
                lambda: store.prediction_count() == 3_000, timeout=60, what="all 3,000 after the restart"
            )
            assert store.gaps() == []
        finally:
            ing.stop()
