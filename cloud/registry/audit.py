"""Append-only, hash-chained audit log of every registry, approval, rollout and governance action.

Each entry's hash covers its content and the previous entry's hash, so editing, deleting or
re-ordering any past entry breaks every hash after it and ``verify`` names the first bad one.
SQLite triggers refuse UPDATE and DELETE so honest code cannot rewrite history by accident;
the chain is what catches someone who edits the file directly. The chain alone cannot tell that
the *newest* entries were removed (what is left is still a valid chain): the release channel
signs a checkpoint of the head outside the database for that (cloud/release/checkpoint.py).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from shared.errors import ParkwatchError

GENESIS = "0" * 64
TABLE = "audit_log"


class AuditError(ParkwatchError):
    pass


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    reason: str | None = None


def entry_hash(
    id: int, ts: float, actor: str, action: str, subject: str, details: Mapping[str, Any], prev_hash: str
) -> str:
    """Pure: the canonical hash of one entry."""
    body = json.dumps(
        {
            "id": id,
            "ts": repr(ts),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
            "prev": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def verify_chain(entries: Iterable[AuditEntry]) -> ChainCheck:
    """Pure: walk entries in id order and report the first that breaks the chain."""
    prev = GENESIS
    count = 0
    expected_id: int | None = None
    for e in entries:
        count += 1
        if expected_id is not None and e.id != expected_id:
            return ChainCheck(False, count, e.id, f"entry ids jump from {expected_id - 1} to {e.id}")
        if e.prev_hash != prev:
            return ChainCheck(
                False, count, e.id, "previous-hash link broken (an entry was removed or reordered)"
            )
        if entry_hash(e.id, e.ts, e.actor, e.action, e.subject, e.details, e.prev_hash) != e.hash:
            return ChainCheck(False, count, e.id, "content does not match its hash (entry was edited)")
        prev = e.hash
        expected_id = e.id + 1
    return ChainCheck(True, count)


class AuditLog:
    def __init__(self, db: sqlite_utils.Database | str | Path) -> None:
        if isinstance(db, (str, Path)):
            # The registry file, opened (and migrated: its tables are in cloud/registry/schema.py)
            # by the one opener; FULL, as before, so an entry that was written survives a power
            # cut. Web apps call us from worker threads; the lock below serialises our own use.
            from cloud.registry.schema import open_db

            db = open_db(db, synchronous="FULL")
        self.db = db
        self._lock = threading.Lock()

    def append(
        self, actor: str, action: str, subject: str, details: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        if not actor.strip() or not action:
            raise AuditError("an audit entry needs an actor and an action")
        details = dict(details or {})
        with self._lock:
            return self._append(actor, action, subject, details)

    def _append(self, actor: str, action: str, subject: str, details: dict[str, Any]) -> AuditEntry:
        conn = self.db.conn
        # BEGIN IMMEDIATE takes the write lock before reading the head, so two processes
        # appending at once cannot both chain onto the same previous entry.
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(f"SELECT id, hash FROM {TABLE} ORDER BY id DESC LIMIT 1").fetchone()
            new_id, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            ts = time.time()
            h = entry_hash(new_id, ts, actor, action, subject, details, prev)
            conn.execute(
                f"INSERT INTO {TABLE} (id, ts, actor, action, subject, details, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_id,
                    ts,
                    actor,
                    action,
                    subject,
                    json.dumps(details, sort_keys=True, default=str),
                    prev,
                    h,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return AuditEntry(new_id, ts, actor, action, subject, details, prev, h)

    def entries(
        self, subject: str | None = None, limit: int | None = None, newest_first: bool = False
    ) -> list[AuditEntry]:
        sql = f"SELECT id, ts, actor, action, subject, details, prev_hash, hash FROM {TABLE}"
        params: list[Any] = []
        if subject is not None:
            sql += " WHERE subject = ?"
            params.append(subject)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._row(r) for r in self.db.execute(sql, params).fetchall()]

    def head(self) -> tuple[int, int, str]:
        """(entries, last id, last hash); (0, 0, GENESIS) for an empty log."""
        row = self.db.execute(f"SELECT COUNT(*), MAX(id) FROM {TABLE}").fetchone()
        if not row or not row[1]:
            return 0, 0, GENESIS
        return int(row[0]), int(row[1]), self.hash_of(int(row[1])) or GENESIS

    def hash_of(self, entry_id: int) -> str | None:
        row = self.db.execute(f"SELECT hash FROM {TABLE} WHERE id = ?", [entry_id]).fetchone()
        return str(row[0]) if row else None

    def verify(self) -> ChainCheck:
        try:
            rows = self.db.execute(
                f"SELECT id, ts, actor, action, subject, details, prev_hash, hash FROM {TABLE} ORDER BY id"
            )
            return verify_chain(self._row(r) for r in rows)
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            return ChainCheck(False, 0, None, f"audit table unreadable: {e}")

    @staticmethod
    def _row(r: tuple[Any, ...]) -> AuditEntry:
        return AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])
