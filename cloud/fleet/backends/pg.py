"""PostgreSQL connections for the fleet store, behind the same small interface the SQLite backend
gives the read side (``db.conn.execute``, ``with db.conn:``, ``db.close()``).

Why an adapter rather than a second copy of every store: the read side (FleetStore, AlertStore,
analysis, dashboard) is written in plain SQL that both databases understand, with SQLite's ``?``
placeholders. :class:`PgConnection` translates those few spellings (``?``, ``INSERT OR IGNORE``)
and the driver's errors into the DB-API errors the callers already handle, so one store class
serves both backends and other changes to it keep working on PostgreSQL. What is different for
real (the ingest write path, retention by partition) has its own code: pg_writer.py, pg_store.py.

The connection runs in autocommit mode: a read is its own statement and never leaves a
transaction open (an idle transaction would block retention's ``DROP`` of an old partition);
``with conn:`` opens a real transaction for a group of writes, as sqlite3's does.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.adapt import Loader

from cloud.fleet.backends.migrations import migrate_pg
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import FleetError

_migrated: set[str] = set()


class _NumericLoader(Loader):
    """``sum()`` of integers is ``numeric`` in PostgreSQL (``Decimal`` in Python), an integer in
    SQLite: load whole numbers as int and the rest as float so both backends return the same JSON."""

    def load(self, data: Any) -> int | float:
        s = bytes(data).decode()
        try:
            return int(s)
        except ValueError:
            return float(s)


@functools.lru_cache(maxsize=1024)
def translate(sql: str, has_params: bool) -> str:
    """SQLite spelling → PostgreSQL: ``?`` placeholders, ``INSERT OR IGNORE``."""
    out = sql
    if re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO", out, re.I):
        out = re.sub(r"INSERT\s+OR\s+IGNORE\s+INTO", "INSERT INTO", out, count=1, flags=re.I)
        out = out.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    if has_params:
        out = out.replace("%", "%%").replace("?", "%s")
    return out


def as_sqlite_error(e: psycopg.Error) -> sqlite3.Error:
    """The callers of the stores handle the DB-API errors of the embedded backend; a PostgreSQL
    error keeps its class of fault (bad value vs. unavailable database) and its message."""
    msg = f"PostgreSQL: {str(e).strip()}"
    if isinstance(e, psycopg.errors.IntegrityError):
        return sqlite3.IntegrityError(msg)
    if isinstance(e, psycopg.errors.DataError):
        return sqlite3.DataError(msg)
    if isinstance(e, psycopg.errors.ProgrammingError):
        return sqlite3.ProgrammingError(msg)
    return sqlite3.OperationalError(msg)


def raw_connect(target: PgTarget, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A psycopg connection with the fleet schema migrated (once per process and database)."""
    try:
        kw: dict[str, Any] = target.conninfo()
        conn = psycopg.connect(
            **kw,
            autocommit=autocommit,
            cursor_factory=psycopg.ClientCursor,
            connect_timeout=10,
        )
    except psycopg.Error as e:
        raise FleetError(
            f"cannot connect to the PostgreSQL fleet store {target.display()}: {str(e).strip()}; check "
            "fleet.database_url, fleet.database_password and that the server accepts this host"
        ) from e
    conn.adapters.register_loader("numeric", _NumericLoader)
    if target.url not in _migrated:
        if not autocommit:
            conn.autocommit = True
        migrate_pg(conn)
        conn.autocommit = autocommit
        _migrated.add(target.url)
    return conn


class PgConnection:
    """The part of ``sqlite3.Connection`` the fleet's read side uses, over a psycopg connection."""

    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self.raw = raw_connect(target)
        self._tx: list[Any] = []

    def _reconnect_if_broken(self) -> None:
        """A long-lived store (the dashboard's) survives a database restart: outside a
        transaction, a broken connection is replaced by a new one on the next statement."""
        if (self.raw.broken or self.raw.closed) and not self._tx:
            self.raw.close()
            self.raw = raw_connect(self.target)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> psycopg.ClientCursor[Any]:
        self._reconnect_if_broken()
        has = bool(params)
        try:
            cur = self.raw.cursor()
            cur.execute(translate(sql, has), params if has else None)
            return cur  # type: ignore[return-value]
        except psycopg.Error as e:
            raise as_sqlite_error(e) from e

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.ClientCursor[Any]:
        self._reconnect_if_broken()
        try:
            cur = self.raw.cursor()
            cur.executemany(translate(sql, True), list(seq))
            return cur  # type: ignore[return-value]
        except psycopg.Error as e:
            raise as_sqlite_error(e) from e

    @property
    def in_transaction(self) -> bool:
        return bool(self._tx)

    def __enter__(self) -> PgConnection:
        self._reconnect_if_broken()
        tx = self.raw.transaction()
        tx.__enter__()
        self._tx.append(tx)
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        tx = self._tx.pop()
        try:
            tx.__exit__(et, ev, tb)
        except psycopg.Error as e:
            raise as_sqlite_error(e) from e

    def close(self) -> None:
        self.raw.close()


class PgDatabase:
    """What ``schema.connect`` returns for PostgreSQL: ``.conn`` and ``.close()`` like sqlite-utils'."""

    dialect = "postgresql"

    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self.conn = PgConnection(target)

    def close(self) -> None:
        self.conn.close()
