"""The two-stage ingest: acknowledged into the inbox, then materialized exactly once into fleet rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.analysis.job import open_governor, run_health
from cloud.cli import cloud
from cloud.fleet import materialize
from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.inbox import Inbox, inbox_path, inbox_states
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.materialize import Materializer
from cloud.fleet.schema import connect
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import CAUSE_EVICTED, CAUSE_LOST, BatchWriter, Incoming
from cloud.governance.alerts import AlertStore
from shared.broker import EmbeddedBroker
from shared.protocol import (
    DeviceStatus,
    Kind,
    Prediction,
    PredictionBatch,
    Topics,
    encode,
    parse_topic,
)
from tests.fleetutil import cloud_cfg, wait_for
from tests.release_support import write_cloud_toml
from tests.simdevice import SimDevice


def _batches(dev: SimDevice, n: int, size: int = 50) -> list[tuple[str, bytes, float, bool]]:
    topic = dev.topic(Kind.PREDICTIONS)
    return [
        (
            topic,
            encode(PredictionBatch(device=dev.device, site=dev.site, predictions=dev.make_predictions(size))),
            time.time(),
            False,
        )
        for _ in range(n)
    ]


def test_a_crash_between_commit_and_trim_does_not_apply_rows_twice(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    worker = "w-crash"
    dev = SimDevice("127.0.0.1", broker.port, device="box-c")  # never connects: payloads only
    rows = _batches(dev, 4)
    inbox = Inbox(inbox_path(cfg.paths, worker))
    inbox.append(rows)
    m = Materializer(cfg, worker)
    assert m.step() == 4 and m.step() == 0
    m.close()
    # The power went out after fleet.db committed but before the inbox was trimmed: the rows are back.
    with inbox.conn:
        inbox.conn.executemany(
            "INSERT INTO inbox(id, topic, payload, received_ts, retained) VALUES (?,?,?,?,?)",
            [(i + 1, *r) for i, r in enumerate(rows)],
        )
    assert inbox.backlog() == 4
    m2 = Materializer(cfg, worker)  # reads its progress mark from fleet.db and skips them
    assert inbox.backlog() == 0 and m2.step() == 0
    more = _batches(dev, 1)
    inbox.append(more)
    assert m2.step() == 1
    m2.close()
    inbox.close()
    with FleetStore(cfg.paths.fleet_db) as fs:
        assert fs.prediction_count() == 250
        assert fs.counters().get("duplicates.predictions", 0) == 0
        assert fs.gaps("box-c") == []


def test_invalid_messages_become_dead_letters_and_the_cli_lists_them(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    worker = "w-dead"
    dev = SimDevice("127.0.0.1", broker.port, device="box-d")
    topic = dev.topic(Kind.PREDICTIONS)
    inbox = Inbox(inbox_path(cfg.paths, worker))
    inbox.append(
        [
            (topic, b"\xff\xfe{not json", time.time(), False),
            *_batches(dev, 1, 5),
            (topic, b'{"schema": 7}', time.time(), False),
        ]
    )
    m = Materializer(cfg, worker)
    assert m.step() == 3
    m.close()
    inbox.close()
    with FleetStore(cfg.paths.fleet_db) as fs:
        assert fs.prediction_count() == 5  # the valid one in between is not held up by its neighbours
        letters = fs.dead_letters()
        assert [d.kind for d in letters] == ["unsupported_schema", "malformed"]
        # Not UTF-8, the usual reason a payload is refused: shown with replacement characters.
        assert letters[1].payload == "\ufffd\ufffd{not json" and "not JSON" in letters[1].reason
        assert fs.counters()["rejected.malformed"] == 1
    toml = write_cloud_toml(cfg, tmp_path / "cloud.toml")
    res = CliRunner().invoke(cloud, ["inbox", "--json", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["dead_letters_total"] == 2
    assert out["workers"] == [
        {"worker": worker, "backlog": 0, "oldest_age_s": None, "path": str(inbox_path(cfg.paths, worker))}
    ]
    res = CliRunner().invoke(cloud, ["inbox", "--config", str(toml)])
    assert res.exit_code == 0 and "unsupported_schema" in res.output and worker in res.output
    (cfg.data_dir / "ingest" / "broken.inbox.db").write_bytes(b"not a database at all" * 100)
    res = CliRunner().invoke(cloud, ["inbox", "--config", str(toml)])
    assert res.exit_code == 0, res.output  # one bad file is reported, the rest still listed
    assert "broken" in res.output and "UNREADABLE" in res.output and worker in res.output


def test_a_killed_materializer_is_restarted_and_nothing_is_lost_or_doubled(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10)
    dev = SimDevice("127.0.0.1", broker.port, device="box-k").connect()
    store = FleetStore(cfg.paths.fleet_db)
    try:
        dev.predict(2_000, batch_size=50)
        wait_for(lambda: store.prediction_count() > 0, what="materializing")
        pid = ing.materializer.pid  # the `parkwatch cloud materialize` child process
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # while it works through the burst, as hard as a crash gets
        dev.predict(2_000, batch_size=50)
        dev.flush()
        wait_for(lambda: ing.stats()["materializer_restarts"] == 1, what="materializer restarted")
        wait_for(lambda: store.prediction_count() == 4_000, timeout=60, what="all 4,000 stored")
        # The inbox is trimmed just after the fleet commit that made the rows visible.
        wait_for(lambda: ing.stats()["inbox_backlog"] == 0, what="inbox trimmed")
        # 80 batches and the online status; counted just after the acks, so maybe after the rows.
        wait_for(lambda: ing.stats()["accepted"] >= 81, what="accepted counted")
        st = ing.stats()
        assert st["materializer_alive"]
        assert store.gaps("box-k") == []
        assert store.counters().get("duplicates.predictions", 0) == 0  # re-applied would count here
        assert "exited" in (st["last_error"] or "")
    finally:
        dev.disconnect()
        ing.stop()
        store.close()


def test_a_stalled_inbox_raises_an_ingest_backlog_alert_and_clears(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker, fleet={"inbox_lag_alert_s": 60})
    worker = "w-stall"
    dev = SimDevice("127.0.0.1", broker.port, device="box-s")
    inbox = Inbox(inbox_path(cfg.paths, worker))
    inbox.append([(t, p, time.time() - 600, False) for t, p, _, _ in _batches(dev, 3)])  # waited 10 minutes
    states = inbox_states(cfg.paths, time.time())
    assert states[0]["backlog"] == 3 and states[0]["oldest_age_s"] >= 599
    gov = open_governor(cfg, publish=False)
    with FleetStore(cfg.paths.fleet_db) as fs:
        run_health(cfg, fs, gov)
        active = [a for a in AlertStore(cfg.paths.fleet_db).list() if a.state == "open"]
        assert [a.rule for a in active] == ["ingest_backlog"]
        assert "w-stall" in active[0].message and "parkwatch cloud inbox" in active[0].message
        m = Materializer(cfg, worker)
        assert m.step() == 3
        m.close()
        run_health(cfg, fs, gov)
        by_rule = {a.rule: a.state for a in AlertStore(cfg.paths.fleet_db).list()}
        # Its rows arrived ten minutes late, so the box itself now reads as silent: that is right.
        assert by_rule == {"ingest_backlog": "resolved", "device_offline": "open"}
    inbox.close()


def test_inbox_ids_keep_growing_after_the_table_empties(tmp_path: Path) -> None:
    """The progress mark is an id; a reused id would make the materializer skip a new message."""
    ib = Inbox(tmp_path / "x.inbox.db")
    ib.append([("t", b"a", 1.0, False), ("t", b"b", 1.0, False)])
    ib.delete_upto(2)
    ib.append([("t", b"c", 1.0, False)])
    assert [r[0] for r in ib.take(0, 10)] == [3]
    ib.close()
    assert sqlite3.connect(tmp_path / "x.inbox.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_recreated_inbox_is_applied_from_its_first_row(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """The mark in fleet.db names its inbox: a new file's ids 1, 2, 3 are not taken for applied ones."""
    cfg = cloud_cfg(tmp_path, broker)
    dev = SimDevice("127.0.0.1", broker.port, device="box-r")
    path = inbox_path(cfg.paths, "w-re")
    for batches in (3, 2):
        for f in path.parent.glob(path.name + "*"):
            f.unlink()  # the second time round: lost, restored from an old backup, or deleted by hand
        inbox = Inbox(path)
        inbox.append(_batches(dev, batches))
        m = Materializer(cfg, "w-re")
        assert m.step() == batches
        m.close()
        inbox.close()
    with FleetStore(cfg.paths.fleet_db) as fs:
        assert fs.prediction_count() == 250


def test_drain_applies_a_left_behind_inbox_and_two_materializers_never_share_one(
    tmp_path: Path, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    dev = SimDevice("127.0.0.1", broker.port, device="box-o")
    inbox = Inbox(inbox_path(cfg.paths, "old-name"))
    inbox.append(_batches(dev, 2, 10))
    inbox.close()
    toml = write_cloud_toml(cfg, tmp_path / "cloud.toml")
    monkeypatch.setattr(materialize, "LOCK_WAIT_S", 0.3)
    holder = Materializer(cfg, "old-name")  # e.g. a worker still stopping
    try:
        with pytest.raises(FleetError, match="another materializer holds"):
            Materializer(cfg, "old-name")
        res = CliRunner().invoke(cloud, ["inbox", "--drain", "old-name", "--config", str(toml)])
        assert res.exit_code == 1 and "another materializer holds" in res.output
    finally:
        holder.close()
    res = CliRunner().invoke(cloud, ["inbox", "--drain", "old-name", "--json", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["workers"][0]["backlog"] == 0
    with FleetStore(cfg.paths.fleet_db) as fs:
        assert fs.prediction_count() == 20
    res = CliRunner().invoke(cloud, ["inbox", "--drain", "typo", "--config", str(toml)])
    assert res.exit_code == 1 and "known workers: old-name" in res.output


def test_a_record_the_database_refuses_becomes_a_dead_letter_and_the_rest_is_stored(tmp_path: Path) -> None:
    """Validation bounds seq now, but the writer must not trust that: isolate, keep, move on."""
    db = connect(tmp_path / "fleet.db")
    w = BatchWriter(db)
    topic = Topics.device("park1", "box-p", Kind.PREDICTIONS)
    parsed = parse_topic(topic)
    dev = SimDevice("127.0.0.1", 1, device="box-p")

    def incoming(preds: list[Prediction]) -> Incoming:
        msg = PredictionBatch(device="box-p", site="park1", predictions=preds)
        return Incoming(parsed, msg, time.time(), topic, encode(msg))

    good1, good2 = incoming(dev.make_predictions(3)), incoming(dev.make_predictions(3))
    bad_pred = Prediction.model_construct(**{**dev.make_predictions(1)[0].model_dump(), "seq": 2**64})
    bad = incoming([bad_pred])
    with pytest.raises(BadRecord):
        w.write([good1, bad, good2], progress=("w", "x", 3))
    assert w.progress("w") == ("", 0)  # all or nothing
    with pytest.raises(BadRecord):  # item by item, but still one transaction: a late failure keeps nothing
        w.write([good1, bad, good2], progress=("w", "x", 2**64), isolate=True)
    with FleetStore(tmp_path / "fleet.db") as fs:
        assert fs.prediction_count() == 0 and fs.dead_letters() == []
    res = w.write([good1, bad, good2], progress=("w", "x", 3), isolate=True)
    assert res.predictions_stored == 6 and [d.kind for d in res.refused] == ["invalid"]
    assert "cannot be stored" in res.refused[0].reason and res.refused[0].payload == bad.payload
    assert w.progress("w") == ("x", 3)
    with FleetStore(tmp_path / "fleet.db") as fs:
        assert fs.prediction_count() == 6 and len(fs.dead_letters()) == 1
        assert fs.counters()["rejected.invalid"] == 1
    db.close()


def test_a_lagging_worker_does_not_put_back_an_older_status(tmp_path: Path) -> None:
    """Every worker stores every status; the later arrival wins whichever worker applies it last."""
    db = connect(tmp_path / "fleet.db")
    w = BatchWriter(db)
    topic = Topics.device("park1", "box-s", Kind.STATUS)
    parsed = parse_topic(topic)
    online = DeviceStatus(device="box-s", site="park1", state="online", ts=1_795_500_000.0)
    offline = DeviceStatus(
        device="box-s", site="park1", state="offline", ts=1_795_500_000.0, reason="last-will"
    )
    w.write([Incoming(parsed, online, 1000.0)])  # worker A
    w.write([Incoming(parsed, offline, 1060.0)])  # worker A, a minute later
    w.write([Incoming(parsed, online, 1000.5)])  # worker B catching up with its inbox
    with FleetStore(tmp_path / "fleet.db") as fs:
        assert fs.device("box-s").status == "offline"
    db.close()


def test_a_restarted_ingest_does_not_take_retained_replays_for_signs_of_life(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """On (re)subscribing, the broker replays every retained status: that is what a box last said,
    not that it said it now, so a dead box must not look alive or go offline a second time."""
    cfg = cloud_cfg(tmp_path, broker)
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10)
    dev = SimDevice("127.0.0.1", broker.port, device="box-r").connect()
    store = FleetStore(cfg.paths.fleet_db)
    db = sqlite3.connect(cfg.paths.fleet_db)

    def events() -> int:
        return int(db.execute("SELECT count(*) FROM status_events WHERE device='box-r'").fetchone()[0])

    try:
        dev.telemetry()
        dev.flush()
        dev.kill()  # dies: the broker publishes its retained last-will
        # The device row appears only once the materializer has applied its first message.
        wait_for(
            lambda: (
                store.query("SELECT status_reason FROM devices WHERE device='box-r'")
                == [{"status_reason": "last-will"}]
            ),
            what="last-will stored",
        )
        before = store.device("box-r")
        n_events = events()
        ing.stop()
        time.sleep(1.1)  # so a replay stamped with its arrival would show a later last_seen
        ing = FleetIngest(cfg)
        ing.start()
        assert ing.wait_connected(10)
        wait_for(lambda: ing.stats()["accepted"] >= 1, what="the retained status replayed")
        wait_for(lambda: ing.stats()["inbox_backlog"] == 0 and ing.stats()["batches"] >= 1, what="applied")
        after = store.device("box-r")
        assert after.last_seen == before.last_seen and after.status_ts == before.status_ts
        assert events() == n_events  # no second "offline" event
        # A box first heard of through a replay is dated by what it said, not by the replay.
        other = SimDevice("127.0.0.1", broker.port, device="box-new")
        offline = DeviceStatus(device="box-new", site="park1", state="offline", ts=time.time() - 3600)
        topic = other.topic(Kind.STATUS)
        w = BatchWriter(connect(cfg.paths.fleet_db))
        w.write([Incoming(parse_topic(topic), offline, time.time(), topic, encode(offline), retained=True)])
        w.db.close()
        assert store.device("box-new").last_seen == pytest.approx(offline.ts)
        # The same state replayed, but the box was updated meanwhile: the news is kept, no new event.
        newer = offline.model_copy(update={"software": "9.9.9"})
        w = BatchWriter(connect(cfg.paths.fleet_db))
        w.write([Incoming(parse_topic(topic), newer, time.time(), topic, encode(newer), retained=True)])
        w.db.close()
        assert store.device("box-new").software == "9.9.9"
        assert db.execute("SELECT count(*) FROM status_events WHERE device='box-new'").fetchone()[0] == 1
    finally:
        ing.stop()
        store.close()
        db.close()


def test_a_gap_is_blamed_on_evictions_only_when_the_batch_after_it_reports_new_ones(tmp_path: Path) -> None:
    db = connect(tmp_path / "fleet.db")
    w = BatchWriter(db)
    topic = Topics.device("park1", "box-e", Kind.PREDICTIONS)
    dev = SimDevice("127.0.0.1", 1, device="box-e")

    def batch(n: int, evicted: int) -> Incoming:
        msg = PredictionBatch(
            device="box-e", site="park1", predictions=dev.make_predictions(n), evicted_total=evicted
        )
        return Incoming(parse_topic(topic), msg, time.time(), topic, encode(msg))

    first = batch(10, 0)  # seqs 1..10
    dev.skip(5)  # 11..15 evicted from the full outbox
    evicted = batch(5, 5)  # 16..20, reporting the five evictions
    dev.skip(5)  # 21..25 lost on the way, no new eviction
    lost = batch(5, 5)  # 26..30
    w.write([first, evicted, lost])  # one materializer step, as during a burst
    with FleetStore(tmp_path / "fleet.db") as fs:
        causes = {(g.first_seq, g.last_seq): g.cause for g in fs.gaps("box-e")}
    assert causes == {(11, 15): CAUSE_EVICTED, (21, 25): CAUSE_LOST}
    db.close()


def test_burst_mode_takes_small_steps_only_while_the_receiver_is_pushed(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    dev = SimDevice("127.0.0.1", broker.port, device="box-b")
    inbox = Inbox(inbox_path(cfg.paths, "w-burst"))
    inbox.append(_batches(dev, 120, 1))
    m = Materializer(cfg, "w-burst")
    # The receiver just committed 120 messages at once (the broker pushing hard): said in the inbox.
    assert m.receiver_busy()
    assert m.step(materialize.BURST_STEP if m.receiver_busy() else None) == materialize.BURST_STEP
    with inbox.conn:  # the burst is over
        inbox.conn.execute("UPDATE meta SET value=? WHERE key='rx_ts'", (repr(time.time() - 5),))
    assert not m.receiver_busy() and m.step() == 70
    inbox.append(_batches(dev, 1, 1))  # quiet: one message at a time
    assert not m.receiver_busy() and m.step() == 1
    m.close()
    inbox.close()


def test_an_inbox_written_before_the_retained_column_is_migrated_and_read(tmp_path: Path) -> None:
    path = tmp_path / "old.inbox.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, received_ts REAL NOT NULL);"
        "INSERT INTO inbox(topic, payload, received_ts) VALUES ('t', x'61', 1.0);"
    )
    old.commit()
    old.close()
    ib = Inbox(path)  # a worker upgraded with a backlog still waiting
    ib.append([("t", b"b", 2.0, True)])
    assert ib.take(0, 10) == [(1, "t", b"a", 1.0, False), (2, "t", b"b", 2.0, True)]
    ib.close()


def test_the_backlog_is_read_safely_while_another_process_trims_the_inbox(tmp_path: Path) -> None:
    """The receiver reads the backlog while the materializer (another connection) deletes the
    rows it applied. Two statements read the oldest id and then its row, and the row could be
    gone between them: ``cloud inbox``/stats crashed with TypeError mid-benchmark."""
    import threading

    path = tmp_path / "w.inbox.db"
    reader = Inbox(path)
    trimmer = Inbox(path, synchronous="NORMAL")
    stop = threading.Event()
    errors: list[BaseException] = []

    def trim() -> None:
        last = 0
        try:
            while not stop.is_set():
                trimmer.append([("t", b"x", 1.0, False)] * 5)
                last += 5
                trimmer.delete_upto(last - 1)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=trim)
    t.start()
    try:
        deadline = time.monotonic() + 3.0
        reads = 0
        while time.monotonic() < deadline and not errors:
            n, oldest = reader.backlog_and_oldest()
            assert n >= 0 and (oldest is None or oldest == 1.0)
            reads += 1
    finally:
        stop.set()
        t.join()
        reader.close()
        trimmer.close()
    assert errors == [] and reads > 100
