"""Numbered schema migrations, one scheme for both fleet backends.

Each backend has an ordered list of ``(number, statements)``; a database records the last number
applied (SQLite: ``PRAGMA user_version``; PostgreSQL: the ``schema_version`` table) and applies
the rest in order, each migration in its own transaction together with its new number, so a crash
half-way leaves the database at a known version. Several processes opening the same database at
once (ingest workers on several hosts) serialize on a lock (SQLite's write lock, a PostgreSQL
advisory lock) and re-read the version under it, so a migration runs once.

A new column or table is a new migration at the end of both lists; a shipped migration is never
edited.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from cloud.fleet.backends import pg_ddl
from cloud.fleet.errors import FleetError

Migration = tuple[int, str]

# SQLite: version 1 is the schema as it shipped before numbered migrations (all CREATE ... IF NOT
# EXISTS, so a fleet.db from then adopts it unchanged); the DDL text lives in cloud/fleet/schema.py.
SQLITE_WORKERS = """
CREATE TABLE IF NOT EXISTS ingest_workers (
    worker TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_ts REAL NOT NULL,
    heartbeat_ts REAL NOT NULL,
    state TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,
    backlog INTEGER,
    oldest_age_s REAL,
    stored_predictions INTEGER NOT NULL DEFAULT 0,
    write_errors INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""

# Each materializer's counters, added in the transaction of every batch (cloud/fleet/materializer_stats.py).
SQLITE_MATERIALIZER_STATS = """
CREATE TABLE IF NOT EXISTS materializer_stats (
    worker TEXT PRIMARY KEY,
    materialized INTEGER NOT NULL DEFAULT 0,
    stored_predictions INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    dead_letters INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    batches INTEGER NOT NULL DEFAULT 0,
    last_batch_ts REAL,
    last_batch_rows INTEGER NOT NULL DEFAULT 0,
    lag_s REAL
);
"""

PG_LOCK_KEY = 0x7061726B  # 'park': the advisory lock migrations take


def sqlite_migrations(base_ddl: str) -> list[Migration]:
    return [(1, base_ddl), (2, SQLITE_WORKERS), (3, SQLITE_MATERIALIZER_STATS)]


def pg_migrations() -> list[Migration]:
    return [
        (1, pg_ddl.V1),
        (2, pg_ddl.V2_WORKERS),
        (3, pg_ddl.V3_OUTCOMES),
        (4, pg_ddl.V4_OUTCOMES_BACKFILL),
        (5, pg_ddl.V5_MATERIALIZER_STATS),
    ]


def _statements(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        out.append(buf.strip())
    return out


def migrate_sqlite(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Apply pending migrations; returns the version the file is at."""
    latest = migrations[-1][0]
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= latest:
        return latest
    conn.execute("BEGIN IMMEDIATE")  # the write lock: another process migrating waits here
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for number, script in migrations:
            if number <= version:
                continue
            for stmt in _statements(script):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {int(number)}")
            version = number
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


def migrate_pg(conn: object, migrations: Sequence[Migration] | None = None) -> int:
    """Apply pending migrations to a PostgreSQL fleet database (``conn``: a psycopg connection
    in autocommit mode); returns the version it is at."""
    import psycopg

    assert isinstance(conn, psycopg.Connection)
    migs = list(migrations or pg_migrations())
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PG_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, applied_ts double "
                "precision NOT NULL)"
            )
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            for number, script in migs:
                if number <= version:
                    continue
                conn.execute(script.encode())  # several statements: simple query protocol, no params
                conn.execute(
                    "INSERT INTO schema_version(version, applied_ts) VALUES (%s, extract(epoch from now()))",
                    (number,),
                )
                version = number
    except psycopg.Error as e:
        raise FleetError(f"cannot migrate the PostgreSQL fleet store: {e}") from e
    return version
