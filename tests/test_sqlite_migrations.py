"""One SQLite opener and one numbered migration scheme (shared/sqlite.py), against real files.

For every SQLite database parkwatch keeps, a file written with the schema of an older release
(the CREATE statements as they were, user_version 0, rows in it) is opened by today's code: the
rows survive, the new columns and tables are there, the version is the latest. A file from a
newer release is refused with an error that says what to do, and left byte-for-byte unchanged.
The old CREATE statements are copied from this repository's history (commit named at each).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud.dashboard.errors import UserError
from cloud.dashboard.users import USERS_SCHEMA, UserStore
from cloud.fleet.backends import sqlite_ddl
from cloud.fleet.backends.migrations import SQLITE_SCHEMA as FLEET_SCHEMA
from cloud.fleet.errors import FleetError
from cloud.fleet.inbox import INBOX_SCHEMA, Inbox
from cloud.fleet.schema import connect
from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.registry.audit import GENESIS, AuditLog, entry_hash
from cloud.registry.errors import RegistryError
from cloud.registry.schema import REGISTRY_SCHEMA
from cloud.registry.store import Registry
from cloud.release.store import RELEASE_SCHEMA, DeviceStates, RolloutTable
from edge.errors import OutboxError
from edge.outbox import OUTBOX_SCHEMA, Outbox
from shared.sqlite import (
    Migration,
    Schema,
    SchemaTooNewError,
    migrate_sqlite,
    open_sqlite,
    user_version,
)

T0 = 1_795_500_000 // 3600 * 3600.0


def _raw(path: Path, script: str, version: int = 0) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def _columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def _one(path: Path, sql: str, args: tuple[Any, ...] = ()) -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchone()
    finally:
        conn.close()


# The runner itself ---------------------------------------------------------------------------


def test_each_migration_runs_once_in_its_own_transaction_and_a_failed_one_leaves_the_last_good_version(
    tmp_path: Path,
) -> None:
    ran: list[int] = []

    def second(conn: sqlite3.Connection) -> None:
        ran.append(2)
        conn.execute("CREATE TABLE b (x)")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE c (x)")
        raise RuntimeError("migration 3 failed half-way")

    good = Schema("test database", (Migration(1, "CREATE TABLE a (x);"), Migration(2, second)))
    path = tmp_path / "t.db"
    conn = open_sqlite(path, good)
    assert user_version(conn) == 2 and ran == [2]
    assert migrate_sqlite(conn, good) == 2 and ran == [2]  # nothing pending: nothing runs again
    conn.close()
    with pytest.raises(RuntimeError, match="half-way"):
        open_sqlite(path, Schema("test database", (*good.migrations, Migration(3, broken))))
    assert _one(path, "PRAGMA user_version")[0] == 2
    assert _tables(path) == {"a", "b"}  # migration 3's table went with its transaction


def test_migrations_must_be_numbered_in_order() -> None:
    with pytest.raises(ValueError, match="numbered 1, 2, 3"):
        Schema("x", (Migration(1, ""), Migration(3, "")))


def test_a_newer_version_is_refused_by_the_pure_check() -> None:
    s = Schema("test database", (Migration(1, ""), Migration(2, "")))
    assert [m.number for m in s.pending(0, "f")] == [1, 2] and s.pending(2, "f") == ()
    with pytest.raises(SchemaTooNewError, match=r"version 3.*up to 2.*newer parkwatch.*upgrade parkwatch"):
        s.pending(3, "f")


def test_processes_opening_a_new_fleet_db_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        try:
            start.wait()
            connect(path).close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _one(path, "PRAGMA user_version")[0] == FLEET_SCHEMA.latest


def test_switching_a_busy_file_to_wal_waits_for_the_other_opener(tmp_path: Path) -> None:
    """SQLite runs no busy handler for the WAL switch: before the fix, an opener that met another
    process's write lock failed at once with "database is locked", whatever the busy timeout."""
    path = tmp_path / "old.db"
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("INSERT INTO t VALUES (1)")
    holder.execute("BEGIN IMMEDIATE")  # a write lock on a rollback-journal file: another opener migrating
    release = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        conn = open_sqlite(path, busy_timeout_s=10)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        conn.close()
    finally:
        release.join()
        holder.close()


def test_a_file_held_past_the_busy_timeout_still_fails_with_the_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            open_sqlite(path, busy_timeout_s=0.3)
    finally:
        holder.execute("COMMIT")
        holder.close()


# A newer release's file is refused, untouched --------------------------------------------------

Opener = Callable[[Path], Any]
STORES: dict[str, tuple[Schema, Opener, type[Exception]]] = {
    "fleet.db": (FLEET_SCHEMA, lambda p: connect(p), FleetError),
    "alerts in fleet.db": (FLEET_SCHEMA, lambda p: AlertStore(p), FleetError),
    "registry.db": (REGISTRY_SCHEMA, lambda p: Registry(p), RegistryError),
    "audit log in registry.db": (REGISTRY_SCHEMA, lambda p: AuditLog(p).db, RegistryError),
    "release.db": (RELEASE_SCHEMA, lambda p: DeviceStates(p), RegistryError),
    "dashboard.db": (USERS_SCHEMA, lambda p: UserStore(p), UserError),
    "inbox": (INBOX_SCHEMA, lambda p: Inbox(p), FleetError),
    "outbox.db": (OUTBOX_SCHEMA, lambda p: Outbox(p), OutboxError),
}


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_database_from_a_newer_release_is_refused_and_left_unchanged(tmp_path: Path, store: str) -> None:
    schema, open_store, error = STORES[store]
    path = tmp_path / "store.db"
    open_store(path).close()
    assert _one(path, "PRAGMA user_version")[0] == schema.latest
    newer = schema.latest + 1
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.commit()
    conn.close()  # the last connection: checkpointed into the main file
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(error, match=rf"schema version {newer}.*newer parkwatch.*upgrade parkwatch"):
        open_store(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert _one(path, "PRAGMA user_version")[0] == newer


# Files written by older releases ---------------------------------------------------------------


# fleet.db as commit 971a6de wrote it: no devices.status_rx, no inbox_progress/dead_letters, no
# predictions.regions/ir, no outcome_hours, no ingest_workers; alerts as the alert store made them.
def _fleet_971a6de() -> str:
    ddl = sqlite_ddl.V1.replace("    status_rx REAL,\n", "")
    ddl, n = re.subn(
        r"-- Where each ingest worker's.*?(?=CREATE TABLE IF NOT EXISTS counters)", "", ddl, flags=re.S
    )
    assert n == 1 and "status_rx" not in ddl and "inbox_progress" not in ddl and "dead_letters" not in ddl
    return ddl + sqlite_ddl.V5_ALERTS


_FLEET_ROWS = f"""
INSERT INTO devices(device, site, max_seq, predictions_total) VALUES ('box1', 'park1', 3, 3);
INSERT INTO predictions(device, seq, site, camera, ts, label, confidence, model_version, abstain, received_ts)
VALUES ('box1', 1, 'park1', 'gate', {T0 + 1}, 'cat', 0.9, 'm1', 0, {T0 + 1}),
       ('box1', 2, 'park1', 'gate', {T0 + 2}, 'dog', 0.8, 'm1', 0, {T0 + 2}),
       ('box1', 3, 'park1', 'gate', {T0 + 3601}, 'none', 0.7, 'm1', 0, {T0 + 3601});
INSERT INTO telemetry(device, ts, site, body, received_ts) VALUES ('box1', {T0}, 'park1', '{{}}', {T0});
INSERT INTO feedback(device, seq, site, label, predicted, model_version, pred_ts, actor, ts)
VALUES ('box1', 2, 'park1', 'cat', 'dog', 'm1', {T0 + 2}, 'ana', {T0 + 10});
INSERT INTO alerts(id, key, rule, site, subject, severity, state, message, details, opened_ts,
    updated_ts, last_seen_ts)
VALUES ('a1', 'k', 'offline', 'park1', 'box1', 'warning', 'open', 'm', '{{}}', {T0}, {T0}, {T0});
"""


def test_a_fleet_db_from_before_numbered_migrations_is_brought_up_to_date_without_losing_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fleet.db"
    _raw(path, _fleet_971a6de() + _FLEET_ROWS)
    with FleetStore(path) as fs:
        assert fs.prediction_count() == 3
    assert _one(path, "PRAGMA user_version")[0] == FLEET_SCHEMA.latest
    assert "status_rx" in _columns(path, "devices")
    assert _columns(path, "predictions")[-2:] == ["regions", "ir"]
    assert {"inbox_progress", "dead_letters", "ingest_workers", "outcome_hours", "alerts_unpublished"} <= (
        _tables(path)
    )
    assert _one(path, "SELECT label, regions, ir FROM predictions WHERE seq = 2") == ("dog", None, None)
    assert _one(path, "SELECT count(*) FROM telemetry")[0] == 1
    assert _one(path, "SELECT label FROM feedback")[0] == "cat"
    # the rows already there are counted once per hour: cat + dog in the first, none in the next
    hours = sqlite3.connect(path).execute(
        "SELECT hour, n, n_cat, n_dog, n_none FROM outcome_hours ORDER BY hour"
    )
    assert [tuple(r) for r in hours] == [(int(T0 // 3600), 2, 1, 1, 0), (int(T0 // 3600) + 1, 1, 0, 0, 1)]
    with AlertStore(path) as st:
        assert st.get("a1").state == "open"
    connect(path).close()  # opened again: nothing runs, nothing counted twice
    assert _one(path, "SELECT sum(n) FROM outcome_hours")[0] == 3


def test_a_fleet_db_at_version_5_gets_the_materializer_counters_as_migration_6(tmp_path: Path) -> None:
    """The materializers' counters came after the alert tables: appended as 6, never folded into a
    shipped migration, so a fleet.db main already wrote (version 5) gains the table and keeps its rows."""
    assert [m.number for m in FLEET_SCHEMA.migrations] == [1, 2, 3, 4, 5, 6]
    path = tmp_path / "fleet.db"
    _raw(path, _fleet_971a6de() + _FLEET_ROWS)
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate_sqlite(conn, Schema(FLEET_SCHEMA.name, FLEET_SCHEMA.migrations[:5])) == 5
    conn.close()
    assert "materializer_stats" not in _tables(path)
    with FleetStore(path) as fs:
        assert fs.prediction_count() == 3
    assert _one(path, "PRAGMA user_version")[0] == 6
    assert "materializer_stats" in _tables(path)
    assert _one(path, "SELECT sum(n) FROM outcome_hours")[0] == 3  # migration 4 did not run again


def test_a_fleet_db_of_the_ad_hoc_era_with_columns_and_counts_present_is_adopted_without_double_counting(
    tmp_path: Path,
) -> None:
    """user_version 2 (commit 2c1d5e7), but the columns and outcome_hours were added on the fly and
    the writer kept counting: every step of migration 3 finds its part there already."""
    path = tmp_path / "fleet.db"
    conn = sqlite3.connect(path)
    conn.executescript(sqlite_ddl.V1 + sqlite_ddl.V2_WORKERS + sqlite_ddl.V5_ALERTS)
    conn.execute("ALTER TABLE predictions ADD COLUMN regions TEXT")
    conn.execute("ALTER TABLE predictions ADD COLUMN ir INTEGER")
    sqlite_ddl.v3_columns_and_outcome_hours(conn)
    conn.executescript(_FLEET_ROWS + "UPDATE predictions SET ir = 1 WHERE seq = 1;")
    conn.execute(sqlite_ddl._BACKFILL)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with FleetStore(path) as fs:
        assert fs.prediction_count() == 3
    assert _one(path, "PRAGMA user_version")[0] == FLEET_SCHEMA.latest
    assert _one(path, "SELECT sum(n), sum(n_ir) FROM outcome_hours") == (3, 1)
    assert _columns(path, "predictions").count("ir") == 1


def test_a_fleet_db_at_version_2_without_the_columns_gets_them(tmp_path: Path) -> None:
    """Commit e131312 shipped user_version 1 and 2 without predictions.regions/ir."""
    path = tmp_path / "fleet.db"
    _raw(path, sqlite_ddl.V1 + sqlite_ddl.V2_WORKERS + sqlite_ddl.V5_ALERTS + _FLEET_ROWS, version=2)
    connect(path).close()
    assert _columns(path, "predictions")[-2:] == ["regions", "ir"]
    assert _one(path, "SELECT sum(n) FROM outcome_hours")[0] == 3


def test_an_inbox_from_before_numbered_migrations_keeps_its_backlog(tmp_path: Path) -> None:
    path = tmp_path / "w1.inbox.db"
    # as commit c3647d1 wrote it: no retained column
    _raw(
        path,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, received_ts REAL NOT NULL);"
        "INSERT INTO meta VALUES ('id', 'abc');"
        "INSERT INTO inbox(topic, payload, received_ts) VALUES ('t', x'61', 1.0);",
    )
    ib = Inbox(path)
    try:
        assert ib.id == "abc" and ib.take(0, 10) == [(1, "t", b"a", 1.0, False)]
    finally:
        ib.close()
    assert _one(path, "PRAGMA user_version")[0] == INBOX_SCHEMA.latest == 2


# registry.db as sqlite-utils created it before commit 4ffc2a8 (no dataset_sources) and before the
# approvals (no stage_history), with the audit log's triggers.
_REGISTRY_OLD = """
CREATE TABLE "datasets" ("id" TEXT PRIMARY KEY, "source" TEXT, "labels" TEXT, "counts" TEXT,
   "n_files" INTEGER, "duplicates" INTEGER, "quarantined" INTEGER, "manifest_path" TEXT, "params" TEXT,
   "created_at" TEXT, "last_ingested_at" TEXT);
CREATE TABLE "dataset_files" ("dataset_id" TEXT REFERENCES "datasets"("id"), "sha256" TEXT, "label" TEXT,
   "split" TEXT, "path" TEXT, "width" INTEGER, "height" INTEGER, "bytes" INTEGER,
   PRIMARY KEY ("dataset_id", "sha256"));
CREATE TABLE "model_versions" ("version" TEXT PRIMARY KEY, "stage" TEXT, "gate_passed" INTEGER, "gate" TEXT,
   "metrics" TEXT, "lineage" TEXT, "package_dir" TEXT, "tarball" TEXT, "tarball_sha256" TEXT,
   "dataset_id" TEXT, "run_id" TEXT, "created_at" TEXT, "stage_changed_at" TEXT);
CREATE TABLE "rollouts" ("id" INTEGER PRIMARY KEY, "version" TEXT, "grp" TEXT, "stage" TEXT,
   "previous_version" TEXT, "kind" TEXT, "actor" TEXT, "reason" TEXT, "status" TEXT, "status_reason" TEXT,
   "started_ts" REAL, "finished_ts" REAL, "devices_total" INTEGER, "devices_active" INTEGER);
CREATE TABLE "audit_log" ("id" INTEGER PRIMARY KEY, "ts" REAL NOT NULL, "actor" TEXT NOT NULL,
   "action" TEXT NOT NULL, "subject" TEXT NOT NULL, "details" TEXT NOT NULL, "prev_hash" TEXT NOT NULL,
   "hash" TEXT NOT NULL);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
INSERT INTO datasets VALUES ('ds0001', '/lake', '["cat","dog"]', '{"train":{"cat":1}}', 1, 0, 0,
   '/m.json', '{}', '2026-11-24T00:00:00+00:00', '2026-11-24T00:00:00+00:00');
INSERT INTO dataset_files VALUES ('ds0001', 'aa', 'cat', 'train', '/lake/cat/1.jpg', 10, 10, 100);
INSERT INTO model_versions VALUES ('v1', 'candidate', 1, '{}', '{}', '{}', '/p', '/p.tar', 'ff', 'ds0001',
   NULL, '2026-11-24T00:00:00+00:00', '2026-11-24T00:00:00+00:00');
INSERT INTO rollouts VALUES (1, 'v1', 'staging', 'staging', NULL, 'rollout', 'ana', 'why', 'succeeded', NULL,
   1.0, 2.0, 1, 1);
"""


def test_a_registry_from_before_numbered_migrations_keeps_its_rows_and_audit_chain(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    details = json.dumps({"n": 1}, sort_keys=True)
    h = entry_hash(1, 5.0, "ana", "register", "model:v1", {"n": 1}, GENESIS)
    _raw(
        path,
        _REGISTRY_OLD + f"INSERT INTO audit_log VALUES (1, 5.0, 'ana', 'register', 'model:v1', '{details}', "
        f"'{GENESIS}', '{h}');",
    )
    with Registry(path) as reg:
        assert reg.get_model("v1").dataset_id == "ds0001"
        assert [d.id for d in reg.list_datasets()] == ["ds0001"]
        assert len(reg.dataset_files("ds0001")) == 1
        assert [s["source"] for s in reg.dataset_sources("ds0001")] == ["/lake"]
        assert [r.version for r in RolloutTable(reg).history("staging")] == ["v1"]
        audit = reg.audit
        assert audit.verify().ok, audit.verify()
        audit.append("bob", "approve", "model:v1", {})
        assert audit.verify().ok and len(audit.entries()) == 2
    assert _one(path, "PRAGMA user_version")[0] == REGISTRY_SCHEMA.latest
    assert {"dataset_sources", "stage_history", "dataset_quarantine", "trials"} <= _tables(path)
    assert _one(path, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")[0] == 2
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn = sqlite3.connect(path)
        conn.execute("DELETE FROM audit_log")


def test_a_release_db_from_before_numbered_migrations_keeps_its_devices(tmp_path: Path) -> None:
    path = tmp_path / "release.db"
    # as commit f05bd48 created it (sqlite-utils), without the username index
    _raw(
        path,
        'CREATE TABLE "devices" ("site" TEXT, "device" TEXT, "grp" TEXT, "username" TEXT, "pw_hash" TEXT,'
        ' "created_ts" REAL, "revoked" INTEGER, PRIMARY KEY ("site", "device"));'
        "INSERT INTO devices VALUES ('park1', 'box1', 'staging', 'park1-box1', 'h', 1.0, 0);",
    )
    states = DeviceStates(path)
    try:
        assert states.membership() == {"park1/box1": "staging"}
        assert states.states() == [] and states.account("cloud") is None
    finally:
        states.close()
    assert _one(path, "PRAGMA user_version")[0] == RELEASE_SCHEMA.latest
    assert _one(path, "SELECT 1 FROM sqlite_master WHERE name = 'idx_devices_username'") == (1,)


def test_a_users_db_from_before_numbered_migrations_keeps_its_users(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.db"
    _raw(path, "")
    store = UserStore(path)
    store.add("ana", "admin", "a long passphrase")
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 0")  # as a release before numbered migrations left it
    conn.commit()
    conn.close()
    store = UserStore(path)
    try:
        assert store.get("ana").role.value == "admin"
    finally:
        store.close()
    assert _one(path, "PRAGMA user_version")[0] == USERS_SCHEMA.latest


def test_an_outbox_from_before_numbered_migrations_keeps_its_waiting_rows_and_counter(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    # as commit 961bfd0 created it (sqlite-utils): rows 5..6 wait, 1..4 were acknowledged
    _raw(
        path,
        'CREATE TABLE "predictions" ("seq" INTEGER PRIMARY KEY, "ts" REAL, "camera" TEXT, "body" TEXT);'
        'CREATE TABLE "meta" ("key" TEXT PRIMARY KEY, "value" INTEGER);'
        "INSERT INTO predictions VALUES (5, 1.0, 'c1', '{\"seq\":5}'), (6, 2.0, 'c1', '{\"seq\":6}');"
        "INSERT INTO meta VALUES ('last_seq', 6), ('evicted_total', 2);",
    )
    ob = Outbox(path)
    try:
        assert ob.backlog == 2 and ob.last_seq == 6 and ob.evicted_total == 2
        assert ob.append([{"ts": 3.0, "camera": "c1", "label": "cat"}]) == [7]
        assert [s for s, _ in ob.pending()] == [5, 6, 7]
    finally:
        ob.close()
    assert _one(path, "PRAGMA user_version")[0] == OUTBOX_SCHEMA.latest
