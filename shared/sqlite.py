"""One way to open a parkwatch SQLite file and bring its schema up to date.

Every SQLite database parkwatch keeps (the edge outbox; the cloud's registry, release, fleet,
dashboard-users and inbox files) is opened by :func:`open_sqlite`: WAL so readers never wait for
the writer, a busy timeout so a second process waits instead of failing with "database is
locked", ``synchronous`` as durable as the caller's promise needs (FULL where a commit is what an
acknowledgement promises), foreign keys where the schema declares them.

A database's tables come from a :class:`Schema`: an ordered list of numbered migrations. The file
records the last number applied in ``PRAGMA user_version``; opening it applies the rest in order,
each in its own write transaction together with its new number, so a crash half-way leaves the
file at a known version, and two processes opening it at once serialize on SQLite's write lock and
re-read the version under it, so a migration runs once. The PostgreSQL fleet store uses the same
:class:`Migration` records and the same :meth:`Schema.pending` check with a ``schema_version``
table (cloud/fleet/backends/migrations.py).

Rules for maintainers: a shipped migration is never edited; a new column or table is a new
migration at the end of the list. Migration 1 of each database is its tables as they shipped
before numbered migrations (``CREATE ... IF NOT EXISTS``), and a column that older releases added
on the fly is added by :func:`add_column`, which skips a column already there: so a file written by
any older release, ``user_version`` 0 with some of those columns present, is adopted without
losing a row. A file whose version is newer than this release knows is refused untouched
(:class:`SchemaTooNewError`): an older parkwatch must not write tables it does not understand.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shared.backoff import Backoff
from shared.errors import ParkwatchError

DEFAULT_BUSY_TIMEOUT_S = 10.0
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SchemaError(ParkwatchError):
    """A database's schema cannot be used by this release; the message says what to do."""


class SchemaTooNewError(SchemaError):
    """The database was written by a newer parkwatch release (its version is beyond ours)."""


class Migration(NamedTuple):
    """One numbered schema step: SQL statements (one script), or a function given the connection
    (an sqlite3 or psycopg connection, inside the migration's transaction; it must not commit)."""

    number: int
    step: str | Callable[[Any], None]
    about: str = ""


@dataclass(frozen=True)
class Schema:
    """The ordered migrations of one kind of database; ``name`` is how errors call it."""

    name: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        numbers = [m.number for m in self.migrations]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{self.name}: migrations must be numbered 1, 2, 3 ... in order, got {numbers}")

    @property
    def latest(self) -> int:
        return len(self.migrations)

    def pending(self, version: int, where: str) -> tuple[Migration, ...]:
        """The migrations a database at ``version`` still needs; refuses a newer database."""
        if version > self.latest:
            raise SchemaTooNewError(too_new_message(self.name, where, version, self.latest))
        if version < 0:
            raise SchemaError(f"{self.name} {where} has a negative schema version {version}: it is not ours")
        return self.migrations[version:]


def too_new_message(name: str, where: str, version: int, latest: int) -> str:
    return (
        f"{name} {where} is at schema version {version}, but this parkwatch release knows versions up "
        f"to {latest} only: it was written by a newer parkwatch. Run the newer release on this host "
        "(upgrade parkwatch), or restore a backup taken before that upgrade. Nothing in it was "
        "changed"
    )


def sql_statements(script: str) -> list[str]:
    """Split a script into complete statements (each migration statement is run on its own, so it
    stays inside the migration's transaction: ``executescript`` would commit first)."""
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


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def table_exists(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return row is not None


def add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> bool:
    """``ALTER TABLE ... ADD COLUMN`` unless the column is there already (older releases added some
    columns on the fly, so a file from before numbered migrations may hold it). Returns whether
    it was added."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    if column in have:
        return False
    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    return True


def migrate_sqlite(conn: sqlite3.Connection, schema: Schema, where: str = "") -> int:
    """Apply the migrations ``conn``'s file lacks, one write transaction each; returns its version."""
    version = user_version(conn)
    if not schema.pending(version, where):
        return version
    if conn.in_transaction:
        conn.commit()
    for m in schema.pending(version, where):
        conn.execute("BEGIN IMMEDIATE")  # the write lock: another process migrating waits here
        try:
            version = user_version(conn)  # re-read under the lock: it may have done this one
            schema.pending(version, where)
            if version < m.number:
                if isinstance(m.step, str):
                    for stmt in sql_statements(m.step):
                        conn.execute(stmt)
                else:
                    m.step(conn)
                conn.execute(f"PRAGMA user_version = {int(m.number)}")
                version = m.number
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return version


def enable_wal(conn: sqlite3.Connection, wait_s: float) -> None:
    """Switch the file to WAL, waiting up to ``wait_s`` for other openers.

    Why not a plain ``PRAGMA journal_mode = WAL``: the switch needs the file to itself, and SQLite
    does not run the busy handler for it, so two processes creating a new file at once failed
    with "database is locked" at once, whatever the busy timeout. On a file already in WAL (every
    file after its first open: the mode persists) the pragma takes no lock and returns at once.
    """
    deadline = time.monotonic() + wait_s
    backoff = Backoff(0.005, 0.2)
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode in ("wal", "memory"):
                return
            err = sqlite3.OperationalError(f"database is locked: it stayed in {mode} mode, not WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            err = e
        delay = backoff.next()
        if time.monotonic() + delay > deadline:
            raise err
        time.sleep(delay)


def open_sqlite(
    path: str | Path,
    schema: Schema | None = None,
    *,
    synchronous: str = "FULL",
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    foreign_keys: bool = False,
    wal: bool = True,
    autocommit: bool = False,
    read_only: bool = False,
) -> sqlite3.Connection:
    """Open (creating the file and its folder if needed) and migrate a parkwatch SQLite file.

    The connection may be used from several threads (``check_same_thread=False``): each store
    guards its own use with a lock. ``autocommit`` gives sqlite3's ``isolation_level=None`` (the
    caller issues BEGIN/COMMIT itself). ``read_only`` opens an existing file without changing it:
    no WAL switch, no migration. Raises :class:`SchemaTooNewError` (nothing written) for a file
    from a newer release, ``sqlite3.Error``/``OSError`` for the rest: callers wrap both in their
    domain's error.
    """
    if synchronous.upper() not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
    p = Path(path)
    kw: dict[str, Any] = {"timeout": busy_timeout_s, "check_same_thread": False}
    if autocommit:
        kw["isolation_level"] = None
    if read_only:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, **kw)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(p), **kw)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if schema is not None and not read_only:
            schema.pending(user_version(conn), str(p))  # refuse a newer file before touching it
        if wal and not read_only:
            enable_wal(conn, busy_timeout_s)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        if schema is not None and not read_only:
            migrate_sqlite(conn, schema, str(p))
    except BaseException:
        conn.close()
        raise
    return conn


__all__ = [
    "Migration",
    "Schema",
    "SchemaError",
    "SchemaTooNewError",
    "add_column",
    "enable_wal",
    "migrate_sqlite",
    "open_sqlite",
    "sql_statements",
    "table_exists",
    "user_version",
]
