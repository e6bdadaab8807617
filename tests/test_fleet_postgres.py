"""The PostgreSQL fleet store against a real PostgreSQL 15 (and SQLite where both must agree):
migrations, several writers at once, retention by arrival day, and ingest workers in separate
processes sharing one store while one of them is killed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from cloud.config import CloudConfig
from cloud.fleet.backends import open_writer
from cloud.fleet.backends.migrations import SQLITE_SCHEMA, migrate_pg, pg_migrations
from cloud.fleet.backends.pg_writer import DAY_S
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import FleetError
from cloud.fleet.schema import connect
from cloud.fleet.store import FleetStore
from cloud.fleet.workers import worker_rows
from cloud.fleet.writer import Incoming
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, Prediction, PredictionBatch, Telemetry, Topics, parse_topic
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice

ROOT = Path(__file__).resolve().parents[1]


def batch(device: str, seqs: list[int], received: float, ts: float | None = None) -> Incoming:
    preds = [
        Prediction(seq=s, ts=ts or received, camera="cam1", label="cat", confidence=0.9, model_version="m1")
        for s in seqs
    ]
    msg = PredictionBatch(device=device, site="park1", predictions=preds)
    return Incoming(parse_topic(Topics.device("park1", device, Kind.PREDICTIONS)), msg, received)


def test_migrations_are_numbered_and_applied_once_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        latest = pg_migrations()[-1][0]
        assert latest == 5  # the materializers' counters, appended after main's 4
        assert migrate_pg(c) == latest
        assert migrate_pg(c) == latest  # a second worker starting: nothing to do
        rows = c.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, latest + 1))
        parts = c.execute("SELECT relname FROM pg_class WHERE relname LIKE 'predictions%'").fetchall()
        assert ("predictions_kept",) in parts
    db = connect(tmp_path / "fleet.db")
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SQLITE_SCHEMA.latest == 6
    db.close()
    # A fleet.db from before numbered migrations (user_version 0, tables present) is adopted.
    raw = sqlite3.connect(tmp_path / "fleet.db")
    raw.execute("PRAGMA user_version = 0")
    raw.close()
    db = connect(tmp_path / "fleet.db")
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SQLITE_SCHEMA.latest
    db.close()


def test_a_store_migrated_by_a_newer_release_is_refused_unchanged(pg_url: str) -> None:
    """The same rule as every SQLite file (shared/sqlite.py): an older parkwatch must not write
    tables it does not understand; the error says to run the newer release."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        latest = migrate_pg(c)
        c.execute("INSERT INTO schema_version VALUES (%s, 0)", (latest + 1,))
        with pytest.raises(
            FleetError, match=rf"schema version {latest + 1}.*newer parkwatch.*upgrade parkwatch"
        ):
            migrate_pg(c)
        rows = c.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [*range(1, latest + 1), latest + 1]


def test_config_refuses_a_password_inside_the_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="database_password"):
        CloudConfig.model_validate({"fleet": {"database_url": "postgresql://u:secret@db/fleet"}})
    cfg = CloudConfig.model_validate(
        {"fleet": {"database_url": "postgresql://u@db/fleet", "database_password": {"env": "PW"}}}
    )
    assert isinstance(cfg.fleet_store, PgTarget) and "secret" not in str(cfg.fleet_store)


def test_concurrent_writers_store_every_seq_once_and_detect_gaps_exactly(pg_url: str) -> None:
    """Four writers apply interleaved, overlapping batches of the same devices at once: every seq
    is stored once, duplicates are counted, and the only gaps are the seqs nobody sent."""
    target = PgTarget(pg_url)
    now = time.time()
    missing = {"a": set(range(301, 311)), "b": set(), "c": {1, 2, 3}}
    work: list[Incoming] = []
    for dev, holes in missing.items():
        seqs = [s for s in range(1, 601) if s not in holes]
        chunks = [seqs[i : i + 20] for i in range(0, len(seqs), 20)]
        chunks += chunks[::7]  # redeliveries
        work += [batch(dev, ch, now) for ch in chunks]
    random.Random(3).shuffle(work)
    shares = [work[i::4] for i in range(4)]
    errors: list[BaseException] = []

    def run(items: list[Incoming]) -> None:
        try:
            w = open_writer(target)
            for i in range(0, len(items), 5):
                w.write(items[i : i + 5])
            w.db.close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with FleetStore(target) as fs:
        sent = sum(600 - len(h) for h in missing.values())
        assert fs.prediction_count() == sent
        for dev, holes in missing.items():
            got = {(g.first_seq, g.last_seq) for g in fs.gaps(dev)}
            want = set()
            if holes:
                want = {(min(holes), max(holes))}
            assert got == want, dev
            assert fs.device(dev).max_seq == 600
            assert fs.device(dev).predictions_total == 600 - len(holes)
        n_dup = (
            sum(len(ch.msg.predictions) for s in shares for ch in s if isinstance(ch.msg, PredictionBatch))
            - sent
        )
        assert fs.counters()["duplicates.predictions"] == n_dup


def test_a_redelivery_on_a_later_day_is_stored_once_and_fills_gaps(pg_url: str) -> None:
    target = PgTarget(pg_url)
    day1 = (time.time() // DAY_S - 3) * DAY_S + 100
    w = open_writer(target)
    w.write([batch("x", [1, 2, 3], day1), batch("x", [6, 7], day1)])
    # Two days later the box resends everything (its outbox lost the PUBACKs), plus the gap.
    w.write([batch("x", [1, 2, 3, 4, 5, 6, 7, 8], day1 + 2 * DAY_S)])
    w.db.close()
    with FleetStore(target) as fs:
        assert fs.prediction_count() == 8
        assert fs.gaps("x") == []
        assert fs.counters()["duplicates.predictions"] == 5
        assert fs.counters()["gaps.recovered_seqs"] == 2


def test_retention_drops_whole_days_by_arrival_and_keeps_labelled_predictions(pg_url: str) -> None:
    target = PgTarget(pg_url)
    now = time.time()
    old = now - 5 * DAY_S
    w = open_writer(target)
    # Received five days ago (box clock right), and received today from a box whose clock is
    # five days behind: retention goes by arrival, so only the first are old.
    w.write([batch("old", list(range(1, 11)), old)])
    w.write([batch("skew", list(range(1, 11)), now, ts=old)])
    tel = Telemetry(
        device="old", site="park1", ts=old, seq=1, cpu_percent=5.0, memory_percent=1.0, disk_percent=1.0,
        uptime_process_s=1.0, uptime_system_s=1.0,
    )  # fmt: skip
    w.write([Incoming(parse_topic(Topics.device("park1", "old", Kind.TELEMETRY)), tel, old)])
    w.db.close()
    with FleetStore(target) as fs:
        fs.add_feedback(fs.prediction("old:4"), "dog", actor="qa")
        out = fs.prune(now - 2 * DAY_S)
        assert out["predictions"] == 9 and out["telemetry"] == 1
        assert fs.prediction_count() == 11  # the labelled one kept, the skewed box's rows kept
        assert fs.prediction("old:4").label == "cat"
        assert fs.telemetry("old") == []
        assert len(fs.feedback()) == 1
        parts = fs.query("SELECT relname FROM pg_class WHERE relname LIKE 'predictions_d%' AND relkind='r'")
        assert len(parts) == 2  # today and tomorrow; the old day is gone as a whole


def test_explain_plans_use_indexes_for_the_dashboard_and_analysis(pg_url: str) -> None:
    """The device page and the analysis window read through indexes, not sequential scans."""
    target = PgTarget(pg_url)
    w = open_writer(target)
    now = time.time()
    w.write([batch(f"d{i}", list(range(1, 51)), now) for i in range(50)])
    w.db.close()
    with psycopg.connect(pg_url) as c:
        c.execute("ANALYZE")
        c.execute("SET enable_seqscan = off")  # tiny tables: ask what the plan would be at size
        for sql, params in (
            (
                "SELECT * FROM predictions WHERE device=%s AND ts>=%s ORDER BY ts DESC LIMIT 100",
                ("d1", now - 3600),
            ),
            ("SELECT label FROM predictions WHERE ts>=%s AND ts<=%s", (now - 3600, now)),
            ("SELECT * FROM devices ORDER BY site, device", None),
        ):
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN " + sql, params).fetchall())
            assert "Index" in plan, plan


@pytest.mark.slow
def test_two_worker_processes_share_the_store_and_a_killed_one_loses_nothing(
    tmp_path: Path, broker: EmbeddedBroker, pg_url: str
) -> None:
    cfg = cloud_cfg(tmp_path, broker, fleet={"database_url": pg_url})
    cfg_json = cfg.model_dump_json()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def worker(name: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.ingest_worker_proc", cfg_json, name],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        return p

    w1, w2 = worker("w1"), worker("w2")
    devs = [SimDevice("127.0.0.1", broker.port, device=f"box{i}", seed=i).connect() for i in range(4)]
    store = FleetStore(cfg.fleet_store)
    try:
        for d in devs:
            d.predict(1_000, batch_size=20)
        wait_for(lambda: store.prediction_count() > 500, timeout=60, what="both workers storing")
        w2.send_signal(signal.SIGKILL)  # a crash: acknowledged rows wait in its inbox
        w2.wait()
        for d in devs:
            d.predict(1_000, batch_size=20)
            d.flush()
        w2 = worker("w2")  # restarted: takes its inbox and what the broker kept for its session
        wait_for(lambda: store.prediction_count() == 8_000, timeout=120, what="all 8,000 stored")
        rows = store.query("SELECT count(*) AS n, count(DISTINCT (device, seq)) AS d FROM predictions")
        assert rows[0]["n"] == rows[0]["d"] == 8_000
        assert store.gaps() == []
        for d in devs:
            assert store.device(d.device).max_seq == 2_000
        stats = store.counters()
        assert stats["stored.predictions"] == 8_000
        workers = {r.worker: r for r in worker_rows(cfg.fleet_store, cfg.fleet.worker_stale_s)}
        assert {"w1", "w2"} <= set(workers)
        assert workers["w1"].state == "running" and workers["w1"].stored_predictions > 0
    finally:
        for d in devs:
            d.disconnect()
        for p in (w1, w2):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=90)
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cloud_inbox_lists_the_workers_of_every_host_from_the_shared_store(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """A worker on another host has no inbox file here; its heartbeat row in the store is what
    `parkwatch cloud inbox` shows, with its backlog, and ``down`` once the heartbeat is stale."""
    import json

    from click.testing import CliRunner

    from cloud.cli import cloud
    from cloud.fleet.workers import Beat, write_beat

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    data = tmp_path / "cloud"
    data.mkdir()
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        f'data_dir = "{data}"\n[fleet]\n' + (f'database_url = "{url}"\n' if url else ""), encoding="utf-8"
    )
    cfg = CloudConfig.model_validate({"data_dir": str(data), "fleet": {"database_url": url} if url else {}})
    w = open_writer(cfg.fleet_store)
    write_beat(w.conn, Beat(worker="host-b-ingest", started_ts=time.time(), backlog=42, oldest_age_s=7.0))
    write_beat(w.conn, Beat(worker="host-c-ingest", started_ts=time.time()))
    mark = "%s" if url else "?"
    w.conn.execute(
        f"UPDATE ingest_workers SET heartbeat_ts={mark} WHERE worker='host-c-ingest'", (time.time() - 600,)
    )
    if not url:
        w.conn.commit()
    w.db.close()
    res = CliRunner().invoke(cloud, ["inbox", "--json", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    got = {x["worker"]: x for x in json.loads(res.output)["fleet_workers"]}
    assert got["host-b-ingest"]["state"] == "running" and got["host-b-ingest"]["backlog"] == 42
    assert got["host-c-ingest"]["state"] == "down"
    res = CliRunner().invoke(cloud, ["inbox", "--config", str(toml)])
    assert "host-b-ingest" in res.output and "down" in res.output


def test_rows_already_stored_are_skipped_even_when_the_device_row_was_recreated(pg_url: str) -> None:
    """The fast path COPYs rows judged new; if some exist anyway (the device row deleted and
    recreated, so its max_seq is gone), the batch falls back to ON CONFLICT DO NOTHING."""
    target = PgTarget(pg_url)
    now = time.time()
    w = open_writer(target)
    w.write([batch("z", [1, 2, 3, 4, 5], now)])
    w.conn.execute("DELETE FROM devices WHERE device='z'")
    res = w.write([batch("z", [1, 2, 3, 4, 5, 6], now)])
    w.db.close()
    assert res.predictions_stored == 1 and res.duplicates == 5
    with FleetStore(target) as fs:
        assert fs.prediction_count("z") == 6
        assert fs.device("z").predictions_total == 1 and fs.device("z").max_seq == 6


def test_writer_and_store_reconnect_after_the_database_restarts(tmp_path: Path) -> None:
    """A server restart (or fail-over) fails the batch in flight, which stays in the inbox and is
    retried; the retry opens a new connection. A long-lived store (the dashboard's) does the same."""
    from cloud.fleet.backends.pgserver import EmbeddedPostgres
    from cloud.fleet.errors import FleetError

    server = EmbeddedPostgres()
    server.start()
    try:
        target = PgTarget(server.create_database("r"))
        w = open_writer(target)
        store = FleetStore(target)
        now = time.time()
        w.write([batch("r", [1, 2], now)])
        assert store.prediction_count() == 2
        server.stop()
        server.start()
        with pytest.raises(FleetError):
            w.write([batch("r", [3, 4], now)])  # the old connection is gone: retried later
        w.write([batch("r", [3, 4], now)])
        with pytest.raises(sqlite3.OperationalError):
            store.prediction_count()
        assert store.prediction_count() == 4
        assert store.gaps("r") == []
        store.close()
        w.db.close()
    finally:
        server.cleanup()


def test_a_backlog_on_another_host_raises_ingest_backlog_from_its_heartbeat_row(
    tmp_path: Path, pg_url: str
) -> None:
    """The analysis host has no inbox of the other hosts' workers: their heartbeat rows stand in."""
    from cloud.analysis.job import open_governor, run_health
    from cloud.fleet.workers import Beat, write_beat
    from cloud.governance.alerts import AlertStore

    cfg = CloudConfig.model_validate(
        {"data_dir": str(tmp_path / "cloud"), "fleet": {"database_url": pg_url, "inbox_lag_alert_s": 60}}
    )
    w = open_writer(cfg.fleet_store)
    write_beat(w.conn, Beat(worker="host-b-ingest", started_ts=time.time(), backlog=900, oldest_age_s=400.0))
    write_beat(w.conn, Beat(worker="host-c-ingest", started_ts=time.time(), backlog=3, oldest_age_s=1.0))
    w.db.close()
    gov = open_governor(cfg, publish=False)
    with FleetStore(cfg.fleet_store) as fs:
        run_health(cfg, fs, gov)
    with AlertStore(cfg.fleet_store) as st:
        alerts = st.list(rule="ingest_backlog")
    assert [a.subject for a in alerts] == ["inbox:host-b-ingest"]
    assert "900 acknowledged messages" in alerts[0].message


def test_hourly_outcomes_count_each_stored_prediction_once(pg_url: str) -> None:
    target = PgTarget(pg_url)
    now = time.time()
    w = open_writer(target)
    w.write([batch("o", list(range(1, 21)), now)])
    w.write([batch("o", list(range(1, 31)), now), batch("o", list(range(21, 31)), now)])  # resends
    w.db.close()
    with FleetStore(target) as fs:
        assert fs.prediction_count("o") == 30
        assert fs.outcomes(device="o", since=now - 3600).total == 30


def _raw_pred(c: psycopg.Connection, device: str, seq: int, ts: float, label: str, ir: int | None) -> None:
    c.execute(
        "INSERT INTO predictions (device, seq, site, camera, ts, label, confidence, model_version, "
        "abstain, received_ts, day) VALUES (%s, %s, 'park1', 'cam1', %s, %s, 0.9, 'm1', %s, %s, 0)",
        (device, seq, ts, label, int(label == "abstain"), ts),
    )
    if ir is not None:
        c.execute("UPDATE predictions SET ir = %s WHERE device = %s AND seq = %s", (ir, device, seq))


def test_an_older_store_counts_the_outcomes_of_the_predictions_it_already_holds(pg_url: str) -> None:
    """Upgrading a version-2 store (rows, no outcome_hours) counts those rows once; an hour a
    version-3 store's writer already counted is not counted again."""
    h0 = 1_795_500_000 // 3600 * 3600.0
    with psycopg.connect(pg_url, autocommit=True) as c:
        migrate_pg(c, pg_migrations()[:3])
        for seq, (label, ir) in enumerate(
            [("cat", 1), ("dog", 0), ("none", None), ("neither", 1), ("abstain", 0), ("fox", None)], 1
        ):
            _raw_pred(c, "old", seq, h0 + seq, label, ir)
        _raw_pred(c, "old", 7, h0 + 3600 + 1, "cat", None)  # the next hour: counted below already
        c.execute(
            "INSERT INTO outcome_hours VALUES ('old', %s, 'park1', 1, 1, 0, 0, 0, 0, 0, 0)",
            (int(h0 // 3600) + 1,),
        )
    with FleetStore(PgTarget(pg_url)) as fs:
        out = fs.outcomes(device="old", since=h0 - 1)
        assert out.total == 7
        assert out.pets == {"cat": 2, "dog": 1, "other pets": 1}, out
        assert out.ir == 2 and out.day == 2 and out.lighting_unknown == 3
        assert out.none == 2 and out.abstain == 1, out
    with FleetStore(PgTarget(pg_url)) as fs:  # opened again: nothing counted twice
        assert fs.outcomes(device="old", since=h0 - 1).total == 7


def test_late_rows_fill_a_gap_with_a_fixed_number_of_gap_writes(pg_url: str) -> None:
    """Two workers sharing a subscription split each device's stream, so about half of what each
    applies lands in a gap the other opened. Each such seq used to cost a SELECT and an UPDATE of
    the gap row: with two workers the store fell to a few thousand predictions/s (the "stall").
    Now a write touches each gap once, however many seqs fill it."""
    target = PgTarget(pg_url)
    now = time.time()
    w = open_writer(target)
    w.write([batch("late", [1, 1000], now)])  # one worker got the ends: gap 2..999
    w.write([batch("late", list(range(k, min(k + 50, 1000))), now) for k in range(2, 1000, 50)])
    w.db.close()  # the backend flushes its table statistics as it exits
    with FleetStore(target) as fs:
        assert fs.gaps("late") == []
        assert fs.prediction_count("late") == 1000
        assert fs.counters()["gaps.recovered_seqs"] == 998
    with psycopg.connect(pg_url, autocommit=True) as c:

        def stats() -> tuple[int, int, int] | None:
            row = c.execute(
                "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'gaps'"
            ).fetchone()
            return row if row and row[0] else None

        ins, upd, dele = wait_for(stats, timeout=30, what="the writer's statistics flushed")
    assert (ins, upd, dele) == (1, 0, 1)  # the gap opened, then deleted once all of it came


def test_dead_letters_and_the_inbox_mark_are_stored_with_the_batch(pg_url: str) -> None:
    from cloud.fleet.writer import DeadLetter

    target = PgTarget(pg_url)
    w = open_writer(target)
    now = time.time()
    letter = DeadLetter("parkwatch/v1/dev/park1/x/predictions", "malformed", "not JSON", now, b"\xff{")
    w.write([batch("x", [1, 2], now)], progress=("w1", "inbox-a", 7), dead_letters=[letter])
    assert w.progress("w1") == ("inbox-a", 7) and w.progress("other") == ("", 0)
    w.db.close()
    with FleetStore(target) as fs:
        (got,) = fs.dead_letters()
        assert (got.worker, got.kind, got.reason, got.bytes) == ("w1", "malformed", "not JSON", 2)
        assert fs.prediction_count("x") == 2
