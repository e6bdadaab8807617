"""Fleet store backends: SQLite (``fleet.db``, the one-host default) and PostgreSQL
(``fleet.database_url``, for several ingest hosts). See docs/cluster.md."""

from __future__ import annotations

from typing import Any

from cloud.fleet.backends.target import FleetTarget, PgTarget, is_pg

__all__ = ["FleetTarget", "PgTarget", "is_pg", "open_writer"]


def open_writer(target: FleetTarget) -> Any:
    """The ingest batch writer for ``target``: ``BatchWriter`` on SQLite, ``PgBatchWriter`` on
    PostgreSQL (same ``write``/``progress``/``db.close()``)."""
    if isinstance(target, PgTarget):
        from cloud.fleet.backends.pg_writer import PgBatchWriter

        return PgBatchWriter(target)
    from cloud.fleet.schema import connect
    from cloud.fleet.writer import BatchWriter

    return BatchWriter(connect(target, synchronous="FULL"))
