"""The prediction outbox: every prediction is committed to SQLite before anything is sent.

Why a database and not a queue in memory: predictions must survive a broker outage, a
``kill -9`` and a reboot. The contract, relied on by the cloud's gap detection:

* ``seq`` is per device, strictly increasing and never reused, also across restarts: the last
  issued number lives in the ``meta`` table and moves in the same transaction as the rows.
* a row leaves the outbox only when the broker acknowledged the batch carrying it (PUBACK), or
  when the configured bound evicts it; evictions are counted in ``meta`` and reported in
  telemetry and in every :class:`~shared.protocol.PredictionBatch` (``evicted_total``).
* a full disk (or the optional size cap) makes :meth:`Outbox.append` raise
  :class:`~edge.errors.OutboxFullError`; the loss is counted and the daemon carries on.

One connection guarded by a lock: writes come from the inference thread, reads and deletes
from the publisher, counts from the status page; SQLite serialises writers anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from edge.errors import OutboxError, OutboxFullError
from shared.sqlite import Migration, Schema, SchemaError, open_sqlite

log = logging.getLogger("parkwatch.edge.outbox")

# outbox.db's tables, as numbered migrations (shared/sqlite.py). 1: as they shipped before numbered
# migrations, in the form sqlite-utils created them (IF NOT EXISTS: a box's older outbox is
# adopted with its waiting rows). A change is a new migration at the end; never edit a shipped one.
OUTBOX_V1 = """
CREATE TABLE IF NOT EXISTS "predictions" (
   "seq" INTEGER PRIMARY KEY,
   "ts" REAL,
   "camera" TEXT,
   "body" TEXT
);
CREATE TABLE IF NOT EXISTS "meta" (
   "key" TEXT PRIMARY KEY,
   "value" INTEGER
);
"""
OUTBOX_SCHEMA = Schema(
    "edge outbox", (Migration(1, OUTBOX_V1, "predictions, meta (last_seq, evicted_total)"),)
)

_FULL_MARKERS = ("database or disk is full", "disk i/o error", "no space left")


def _dumps(body: dict[str, Any]) -> str:
    """A row's JSON. orjson: the body is encoded and decoded again for every prediction sent."""
    try:
        return orjson.dumps(body).decode("utf-8")
    except TypeError:  # what orjson does not take (ints beyond 64 bits, float subclasses) json may
        return json.dumps(body, separators=(",", ":"))


def _loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or Infinity, as json.dumps wrote them before orjson did
        return json.loads(text)


class Outbox:
    def __init__(
        self,
        path: str | Path,
        max_rows: int = 1_000_000,
        max_db_mb: float | None = None,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            # The one SQLite opener (WAL, the schema migrated); autocommit: append() and ack()
            # issue their own BEGIN/COMMIT, so a batch and its seq counter move together.
            self._conn = open_sqlite(
                self.path, OUTBOX_SCHEMA, synchronous=synchronous, busy_timeout_s=5.0, autocommit=True
            )
            self.db = sqlite_utils.Database(self._conn)
            if max_db_mb is not None:
                page = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
                pages = max(int(max_db_mb * 1024 * 1024 / page), 8)
                self._conn.execute(f"PRAGMA max_page_count={pages}")
            self._count = int(self._conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
            row = self._conn.execute("SELECT MAX(seq) FROM predictions").fetchone()
            self._last_seq = max(self._meta("last_seq"), int(row[0] or 0))
            self._evicted = self._meta("evicted_total")
        except SchemaError as e:
            raise OutboxError(str(e)) from e
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(
                f"cannot open the outbox {self.path}: {e}; check the folder exists, is writable by "
                "the parkwatch user and the disk is not full"
            ) from e
        self.write_errors = 0
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.appended_total = 0
        self.acked_total = 0

    # -- helpers -----------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _fail(self, e: sqlite3.Error, what: str) -> OutboxError:
        self.write_errors += 1
        msg = str(e)
        self.last_error_ts = time.time()
        if any(m in msg.lower() for m in _FULL_MARKERS):
            self.last_error = (
                f"outbox {self.path} is full ({msg}) while {what}: free disk space under "
                f"{self.path.parent} or raise [outbox] max_db_mb; predictions are being lost and counted"
            )
            if self.write_errors == 1 or self.write_errors % 100 == 0:
                log.error("%s (errors so far: %d)", self.last_error, self.write_errors)
            return OutboxFullError(self.last_error)
        self.last_error = f"outbox {self.path}: {msg} while {what}"
        log.error("%s (errors so far: %d)", self.last_error, self.write_errors)
        return OutboxError(self.last_error)

    # -- the contract ---------------------------------------------------------------------------
    def append(self, predictions: Sequence[dict[str, Any]]) -> list[int]:
        """Number and commit ``predictions`` (Prediction fields without ``seq``); returns their seqs.

        All or nothing: on error nothing is committed and no seq is consumed.
        """
        if not predictions:
            return []
        with self._lock:
            first = self._last_seq + 1
            seqs = list(range(first, first + len(predictions)))
            rows = []
            for seq, pred in zip(seqs, predictions, strict=True):
                body = dict(pred, seq=seq)
                rows.append((seq, float(body["ts"]), str(body["camera"]), _dumps(body)))
            evict = max(0, self._count + len(rows) - self.max_rows)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        "INSERT INTO predictions(seq, ts, camera, body) VALUES(?, ?, ?, ?)", rows
                    )
                    self._set_meta("last_seq", seqs[-1])
                    evicted = 0
                    if evict:
                        cur = self._conn.execute(
                            "DELETE FROM predictions WHERE seq IN "
                            "(SELECT seq FROM predictions ORDER BY seq LIMIT ?)",
                            (evict,),
                        )
                        evicted = cur.rowcount
                        self._set_meta("evicted_total", self._evicted + evicted)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLITE_FULL has already rolled back
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise self._fail(e, f"writing {len(rows)} prediction(s)") from e
            self._last_seq = seqs[-1]
            self._count += len(rows) - evicted
            if evicted:
                if self._evicted == 0 or (self._evicted // 1000) != ((self._evicted + evicted) // 1000):
                    log.warning(
                        "outbox bound of %d rows reached: evicted %d oldest prediction(s), %d in total",
                        self.max_rows,
                        evicted,
                        self._evicted + evicted,
                    )
                self._evicted += evicted
            self.appended_total += len(rows)
            return seqs

    def pending(self, after_seq: int = 0, limit: int = 200) -> list[tuple[int, dict[str, Any]]]:
        """The oldest rows with ``seq > after_seq``, in seq order."""
        with self._lock:
            try:
                cur = self._conn.execute(
                    "SELECT seq, body FROM predictions WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
                )
                return [(int(s), _loads(b)) for s, b in cur.fetchall()]
            except sqlite3.Error as e:
                raise self._fail(e, "reading pending predictions") from e

    def ack(self, first_seq: int, last_seq: int) -> int:
        """The broker holds seqs ``first..last``: delete them. Returns how many rows went."""
        with self._lock:
            try:
                cur = self._conn.execute(
                    "DELETE FROM predictions WHERE seq BETWEEN ? AND ?", (first_seq, last_seq)
                )
            except sqlite3.Error as e:
                raise self._fail(e, "deleting acknowledged predictions") from e
            n = max(cur.rowcount, 0)
            self._count -= n
            self.acked_total += n
            return n

    @property
    def backlog(self) -> int:
        return self._count

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def evicted_total(self) -> int:
        return self._evicted

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
