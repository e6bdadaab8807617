"""The ingest inbox: raw messages made durable before the broker is acknowledged.

Why a separate stage: storing a prediction batch as rows (validate 50 predictions, insert 50 rows
into two B-trees, detect gaps) costs about ten times what receiving it costs, so an ingest that
acknowledged only after that work ran at a fraction of the broker's delivery rate, and a burst
piled up in the broker, whose queue limits are exactly where messages get dropped (NOTES.md).
Appending the payload as one row to this file is cheap, so the broker's queue drains at close
to delivery speed; the backlog moves into a file we own, bounded by disk, not by
``max_queued_messages``. The materializer (:mod:`cloud.fleet.materialize`) turns inbox rows into
fleet rows in its own process and deletes them.

One inbox file per ingest worker (named after its ``client_id``), so workers never contend for a
write lock here, and a restarted worker resumes its own backlog. ``AUTOINCREMENT`` keeps ids
growing even after the table empties: the materializer's progress mark in ``fleet.db`` is an id.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from cloud.fleet.errors import FleetError
from cloud.paths import CloudPaths
from shared.sqlite import Migration, Schema, SchemaError, add_column, open_sqlite

BUSY_TIMEOUT_S = 10.0

# Numbered migrations (shared/sqlite.py). 1: the tables as first shipped; 2: the retained flag,
# which releases before numbered migrations added on the fly (so it may be there already).
_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_ts REAL NOT NULL
);
"""


def _v2_retained(conn: sqlite3.Connection) -> None:
    # The broker's replay of a retained message on subscribe, told apart from a live message.
    add_column(conn, "inbox", "retained", "INTEGER NOT NULL DEFAULT 0")


INBOX_SCHEMA = Schema(
    "ingest inbox",
    (Migration(1, _V1, "meta, inbox"), Migration(2, _v2_retained, "inbox.retained")),
)

InboxRow = tuple[int, str, bytes, float, bool]  # id, topic, payload, received_ts, retained

# A message the receiver refused (unknown topic, too large) is acknowledged like any other, after
# a row of this topic (``!rejected/<kind>``, the reason as payload, never the message itself) is
# committed: the materializer then counts it in the fleet store in the transaction of its batch,
# so the receiver never writes to the fleet store and no refusal is counted twice or lost.
REJECTED_PREFIX = "!rejected/"
_REASON_MAX = 1000
# The kinds of refusal counted (``rejected.<kind>`` in the fleet store's counters).
REJECT_KINDS = ("malformed", "unsupported_schema", "invalid", "too_large", "unknown_topic", "protocol")


def reject_kind(kind: str) -> str:
    return kind if kind in REJECT_KINDS else "protocol"


def rejection_row(kind: str, reason: str, received_ts: float) -> tuple[str, bytes, float, bool]:
    return (f"{REJECTED_PREFIX}{kind}", reason.encode("utf-8", "replace")[:_REASON_MAX], received_ts, False)


_SUFFIX = ".inbox.db"


def inbox_path(paths: CloudPaths, client_id: str) -> Path:
    return paths.inbox_dir / f"{client_id}{_SUFFIX}"


def _backlog(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """Rows waiting and the oldest one's arrival, from index lookups, not a scan: ids are
    contiguous, because rows are only ever deleted from the front.

    One statement, so one snapshot: the materializer trims the front from another connection,
    and an oldest id read by one statement could be gone by the next."""
    row = conn.execute(
        "SELECT id, received_ts, (SELECT max(id) FROM inbox) FROM inbox ORDER BY id LIMIT 1"
    ).fetchone()
    if row is None:
        return 0, None
    lo, oldest, hi = row
    return int(hi) - int(lo) + 1, float(oldest)


def _worker_lock_path(inbox: Path) -> Path:
    return inbox.with_suffix(".worker.lock")


def materializer_lock_path(inbox: Path) -> Path:
    return inbox.with_suffix(".lock")


def try_flock(path: Path, wait_s: float = 0.0) -> IO[bytes] | None:
    """An exclusive ``flock`` on ``path``, waiting up to ``wait_s``; the open file holds it (closing
    releases it), or None if someone else still holds it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "ab")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as e:
        raise FleetError(f"cannot open the lock file {path}: {e}; check data_dir and its permissions") from e
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(0.1)


def hold_worker_lock(inbox: Path) -> IO[bytes]:
    """Held by a running ingest worker (receiver) for its whole life.

    The materializer's own lock is not enough to tell whether a worker runs: it is free while a
    materializer restarts. ``parkwatch cloud inbox --retire`` checks this one, because connecting
    with a live worker's client_id would take its broker session over.
    """
    f = try_flock(_worker_lock_path(inbox))
    if f is None:
        raise FleetError(
            f"an ingest worker with client_id {inbox.name[: -len(_SUFFIX)]!r} already runs here "
            f"({_worker_lock_path(inbox)} is locked): give each worker its own fleet.client_id, or stop "
            "the other one first"
        )
    return f


def worker_running(paths: CloudPaths, client_id: str) -> bool:
    """Whether an ingest worker with this client_id runs on this machine."""
    path = _worker_lock_path(inbox_path(paths, client_id))
    if not path.exists():
        return False
    f = try_flock(path)
    if f is None:
        return True
    f.close()
    return False


def remove_inbox(paths: CloudPaths, client_id: str) -> None:
    """Delete a retired worker's empty inbox and its lock files; refuses one still holding rows."""
    path = inbox_path(paths, client_id)
    ib = Inbox(path)
    try:
        left = ib.backlog()
    finally:
        ib.close()
    if left:
        raise FleetError(f"inbox {path} still holds {left} message(s): apply them with --drain {client_id}")
    for p in (
        path,
        Path(f"{path}-wal"),
        Path(f"{path}-shm"),
        path.with_suffix(".lock"),
        _worker_lock_path(path),
    ):
        p.unlink(missing_ok=True)


def inbox_states(paths: CloudPaths, now: float) -> list[dict[str, Any]]:
    """Every worker's backlog, read-only (the health check and ``parkwatch cloud inbox`` use it).

    ``oldest_age_s`` is how long the oldest acknowledged message has waited for the materializer:
    the figure that says whether the fleet tables are current.
    """
    out: list[dict[str, Any]] = []
    for f in sorted(paths.inbox_dir.glob(f"*{_SUFFIX}")):
        state: dict[str, Any] = {"worker": f.name[: -len(_SUFFIX)], "path": str(f)}
        try:
            conn = open_sqlite(f, read_only=True, busy_timeout_s=BUSY_TIMEOUT_S)
            try:
                n, oldest = _backlog(conn)
            finally:
                conn.close()
        except sqlite3.Error as e:
            # One unreadable file must not blind the health check to the rest of the fleet.
            state.update(backlog=None, oldest_age_s=None, error=f"cannot read {f}: {e}")
        else:
            state.update(
                backlog=int(n),
                oldest_age_s=None if oldest is None else round(max(0.0, now - float(oldest)), 1),
            )
        out.append(state)
    return out


class Inbox:
    """A WAL SQLite queue; every method is one transaction. Thread-safe within a process."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            # FULL for the receiver: a commit here is what the PUBACK promises. The materializer's
            # trims need no fsync of their own (fleet.db's progress mark decides, and a trim lost
            # to a power cut is redone at start), so they do not hold the receiver's lock as long.
            self.conn = open_sqlite(
                path, INBOX_SCHEMA, synchronous=synchronous, busy_timeout_s=BUSY_TIMEOUT_S
            )
            with self.conn:
                # Identity of this file: the progress mark in fleet.db names it, so a deleted and
                # recreated inbox (ids from 1 again) is not mistaken for the one already applied.
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('id', ?)", (uuid.uuid4().hex,)
                )
            self.id = str(self.conn.execute("SELECT value FROM meta WHERE key='id'").fetchone()[0])
        except SchemaError as e:
            raise FleetError(str(e)) from e
        except (OSError, sqlite3.Error) as e:
            raise FleetError(
                f"cannot open the ingest inbox {path}: {e}; check data_dir in the cloud config and its "
                "permissions"
            ) from e

    def append(self, rows: list[tuple[str, bytes, float, bool]]) -> None:
        """Make ``rows`` (topic, payload, received_ts, retained) durable; only then may they be
        acknowledged."""
        try:
            with self._lock, self.conn:
                self.conn.executemany(
                    "INSERT INTO inbox(topic, payload, received_ts, retained) VALUES (?,?,?,?)", rows
                )
                # How hard the broker is pushing, for the materializer's burst mode (same commit).
                self.conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (("rx_batch", str(len(rows))), ("rx_ts", repr(time.time()))),
                )
        except sqlite3.Error as e:
            raise FleetError(
                f"ingest inbox write failed ({e}); nothing of this batch was acknowledged, the broker "
                "will resend it"
            ) from e

    def receiver_pressure(self) -> tuple[int, float]:
        """The size of the receiver's last commit, and when it was made (0, 0.0 before any)."""
        try:
            with self._lock:
                got = dict(
                    self.conn.execute("SELECT key, value FROM meta WHERE key IN ('rx_batch', 'rx_ts')")
                )
        except sqlite3.Error as e:
            raise FleetError(f"cannot read the ingest inbox {self.path}: {e}") from e
        return int(got.get("rx_batch", 0)), float(got.get("rx_ts", 0.0))

    def take(self, after_id: int, limit: int) -> list[InboxRow]:
        try:
            with self._lock:
                cur = self.conn.execute(
                    "SELECT id, topic, payload, received_ts, retained FROM inbox WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after_id, limit),
                )
                return [(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]), bool(r[4])) for r in cur]
        except sqlite3.Error as e:
            raise FleetError(f"cannot read the ingest inbox {self.path}: {e}") from e

    def delete_upto(self, last_id: int) -> None:
        """Forget rows the fleet database already holds (their ids are at most ``last_id``)."""
        try:
            with self._lock, self.conn:
                self.conn.execute("DELETE FROM inbox WHERE id <= ?", (last_id,))
        except sqlite3.Error as e:
            raise FleetError(f"cannot trim the ingest inbox {self.path}: {e}") from e

    def backlog(self) -> int:
        with self._lock:
            return _backlog(self.conn)[0]

    def backlog_and_oldest(self) -> tuple[int, float | None]:
        """Rows waiting and the oldest one's arrival time."""
        with self._lock:
            return _backlog(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()
