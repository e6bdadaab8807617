"""Numbered schema migrations, one scheme for both fleet backends.

Each backend has an ordered :class:`~shared.sqlite.Schema` of :class:`~shared.sqlite.Migration`
records (the same records every parkwatch SQLite file uses). A database records the last number
applied (SQLite: ``PRAGMA user_version``; PostgreSQL: the ``schema_version`` table) and applies the
rest in order, each migration in its own transaction together with its new number, so a crash
half-way leaves the database at a known version. Several processes opening the same database at
once (ingest workers on several hosts) serialize on a lock (SQLite's write lock, a PostgreSQL
advisory lock) and re-read the version under it, so a migration runs once. A database at a
version newer than the list (written by a newer parkwatch) is refused, unchanged, by the same
:meth:`~shared.sqlite.Schema.pending` check on both.

A new column or table is a new migration at the end of both lists; a shipped migration is never
edited. The numbers are per backend: SQLite's alerts came as its migration 5, PostgreSQL had them
from its migration 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cloud.fleet.backends import pg_ddl, sqlite_ddl
from cloud.fleet.errors import FleetError
from shared.sqlite import Migration, Schema, SchemaError

if TYPE_CHECKING:
    import psycopg

__all__ = ["PG_SCHEMA", "SQLITE_SCHEMA", "Migration", "migrate_pg", "pg_migrations"]

SQLITE_SCHEMA = Schema(
    "fleet database",
    (
        Migration(1, sqlite_ddl.V1, "the tables as they shipped before numbered migrations"),
        Migration(2, sqlite_ddl.V2_WORKERS, "ingest worker heartbeats"),
        Migration(3, sqlite_ddl.v3_columns_and_outcome_hours, "predictions.regions/ir, outcome_hours"),
        Migration(4, sqlite_ddl.V4_OUTCOMES_BACKFILL, "count the outcomes of rows stored before"),
        Migration(5, sqlite_ddl.V5_ALERTS, "alerts (the alert store created them on the fly before)"),
        Migration(6, sqlite_ddl.V6_MATERIALIZER_STATS, "each materializer's counters"),
    ),
)

PG_SCHEMA = Schema(
    "PostgreSQL fleet store",
    (
        Migration(1, pg_ddl.V1, "fleet and alert tables, partitioned by arrival day"),
        Migration(2, pg_ddl.V2_WORKERS, "ingest worker heartbeats"),
        Migration(3, pg_ddl.V3_OUTCOMES, "predictions.regions/ir, outcome_hours"),
        Migration(4, pg_ddl.V4_OUTCOMES_BACKFILL, "count the outcomes of rows stored before"),
        Migration(5, pg_ddl.V5_MATERIALIZER_STATS, "each materializer's counters"),
    ),
)

PG_LOCK_KEY = 0x7061726B  # 'park': the advisory lock migrations take


def pg_migrations() -> list[Migration]:
    return list(PG_SCHEMA.migrations)


def migrate_pg(conn: psycopg.Connection[Any], migrations: Sequence[Migration] | None = None) -> int:
    """Apply pending migrations to a PostgreSQL fleet database (``conn``: a psycopg connection
    in autocommit mode); returns the version it is at. ``migrations`` (a prefix of the list)
    lets tests build an older store."""
    import psycopg

    schema = PG_SCHEMA if migrations is None else Schema(PG_SCHEMA.name, tuple(migrations))
    info = conn.info
    where = f"(database {info.dbname} on {info.host}:{info.port})"
    try:
        while True:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (PG_LOCK_KEY,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, applied_ts double "
                    "precision NOT NULL)"
                )
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                pending = schema.pending(version, where)  # refuses a newer store, unchanged
                if not pending:
                    return version
                m = pending[0]  # one migration per transaction, with its number
                if isinstance(m.step, str):
                    conn.execute(m.step.encode())  # several statements: simple query protocol, no params
                else:
                    m.step(conn)
                conn.execute(
                    "INSERT INTO schema_version(version, applied_ts) VALUES (%s, extract(epoch from now()))",
                    (m.number,),
                )
    except SchemaError as e:
        raise FleetError(str(e)) from e
    except psycopg.Error as e:
        raise FleetError(f"cannot migrate the PostgreSQL fleet store: {e}") from e
