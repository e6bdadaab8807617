"""Fleet database tables. One SQLite file (``cfg.paths.fleet_db``, WAL) for everything the fleet sends,
what the analysis concludes about it, feedback labels and alerts.

Keys carry the guarantees: ``predictions`` is keyed by (device, seq), so a redelivered batch is
stored once; ``telemetry`` by (device, ts); status and model-state history by (device, ts, state).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import sqlite_utils

from cloud.fleet.backends import sqlite_ddl
from cloud.fleet.backends.migrations import SQLITE_SCHEMA
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import FleetError
from shared.sqlite import SchemaError, open_sqlite

if TYPE_CHECKING:
    from cloud.fleet.backends.pg import PgDatabase

BUSY_TIMEOUT_S = 10.0

# The tables' DDL and their numbered migrations: cloud/fleet/backends/sqlite_ddl.py and
# migrations.py (the PostgreSQL side beside it). DDL is migration 1, kept here for older callers.
DDL = sqlite_ddl.V1


@overload
def connect(path: str | Path, synchronous: str = "FULL") -> sqlite_utils.Database: ...
@overload
def connect(path: PgTarget, synchronous: str = "FULL") -> PgDatabase: ...
@overload
def connect(path: str | Path | PgTarget, synchronous: str = "FULL") -> Any: ...
def connect(path: str | Path | PgTarget, synchronous: str = "FULL") -> Any:
    """Open the fleet file in WAL mode so the dashboard reads while ingest writes.

    ``synchronous=FULL`` makes a commit durable before ingest acknowledges the messages to the
    broker: an acknowledged message is on disk, an unacknowledged one is resent by the broker.
    Batching keeps the fsync per transaction cheap. Opening brings the file's schema up to date
    (numbered migrations, ``PRAGMA user_version``) and refuses one from a newer release.

    A :class:`PgTarget` (``fleet.database_url``) opens the PostgreSQL store instead: an object
    with the same ``.conn``/``.close()`` (cloud/fleet/backends/pg.py), its schema migrated.
    """
    if isinstance(path, PgTarget):
        from cloud.fleet.backends.pg import PgDatabase

        return PgDatabase(path)
    p = Path(path)
    try:
        conn = open_sqlite(p, SQLITE_SCHEMA, synchronous=synchronous, busy_timeout_s=BUSY_TIMEOUT_S)
    except SchemaError as e:
        raise FleetError(str(e)) from e
    except (OSError, sqlite3.Error) as e:
        raise FleetError(
            f"cannot open fleet database {p}: {e}; check data_dir in the cloud config and its permissions"
        ) from e
    return sqlite_utils.Database(conn)
