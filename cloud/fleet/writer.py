"""The ingest write path: one SQLite transaction per batch of decoded messages.

Why one transaction for many messages: the broker's acknowledgement is sent only after the
commit, so the commit is the durability point, and an fsync per batch instead of per message is
what makes ingest keep up with the broker.

Gap detection runs here because it must see exactly the rows that were new: a prediction whose
seq jumps past ``max_seq + 1`` opens a gap; a late row (an outbox resending its backlog, a
redelivery after restart) that falls inside a recorded gap shrinks or splits it. The rows and
the gap logic are shared with the PostgreSQL writer (cloud/fleet/rows.py); only the SQL is here.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

import sqlite_utils

from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.materializer_stats import BatchFacts, add_batch
from cloud.fleet.rows import (
    CAUSE_BEFORE,
    CAUSE_EVICTED,
    CAUSE_LOST,
    FIRST_SEQ,
    INSERT_MODEL_STATE,
    INSERT_STATUS_EVENT,
    PRED_COLS,
    SELECT_STATUS,
    TEL_COLS,
    UPDATE_MODEL_STATE,
    UPDATE_STATUS,
    UPDATE_STATUS_DETAILS,
    UPSERT_OUTCOMES,
    FillPlan,
    SeqWalk,
    Tally,
    model_state_rows,
    plan_fill,
    prediction_row,
    status_rows,
    telemetry_row,
)
from shared.protocol import DeviceStatus, Message, ModelState, ParsedTopic, PredictionBatch, Telemetry

# Re-exported: the gap causes and the first seq are part of what this module is known for.
__all__ = [
    "CAUSE_BEFORE",
    "CAUSE_EVICTED",
    "CAUSE_LOST",
    "FIRST_SEQ",
    "BatchWriter",
    "DeadLetter",
    "Incoming",
    "WriteResult",
]


@dataclass(frozen=True)
class Incoming:
    topic: ParsedTopic
    msg: Message
    received_ts: float
    raw_topic: str = ""  # kept so a record the database refuses can become a dead letter
    payload: bytes = b""
    retained: bool = False  # the broker replaying a retained message to a new subscription


# Errors that come from a record's values, so retrying cannot help; anything else from sqlite3
# (locked, full, corrupt, I/O) is the database's and is retried with the batch intact.
_RECORD_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    OverflowError,
    ValueError,
    TypeError,
)


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    kind: str
    reason: str
    received_ts: float
    payload: bytes


DEAD_LETTER_MAX_BYTES = 64 * 1024
# The statements of a write's bookkeeping, the same on both backends (PostgreSQL runs them through
# cloud.fleet.backends.pg.translate).
INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters(worker, topic, kind, reason, received_ts, payload) VALUES (?,?,?,?,?,?)"
)
UPSERT_PROGRESS = (
    "INSERT INTO inbox_progress(worker, inbox_id, upto) VALUES (?, ?, ?) "
    "ON CONFLICT(worker) DO UPDATE SET inbox_id=excluded.inbox_id, upto=excluded.upto"
)
SELECT_PROGRESS = "SELECT inbox_id, upto FROM inbox_progress WHERE worker=?"


def dead_letter_rows(worker: str, letters: list[DeadLetter]) -> list[tuple[object, ...]]:
    return [
        (worker, d.topic, d.kind, d.reason, d.received_ts, d.payload[:DEAD_LETTER_MAX_BYTES]) for d in letters
    ]


@dataclass
class WriteResult:
    messages: int = 0
    predictions_stored: int = 0
    duplicates: int = 0
    telemetry_stored: int = 0
    gaps_opened: list[tuple[str, int, int]] = field(default_factory=list)
    seqs_recovered: int = 0
    refused: list[DeadLetter] = field(default_factory=list)  # isolated by ``write(isolate=True)``

    def merge(self, other: WriteResult) -> None:
        self.predictions_stored += other.predictions_stored
        self.duplicates += other.duplicates
        self.telemetry_stored += other.telemetry_stored
        self.gaps_opened += other.gaps_opened
        self.seqs_recovered += other.seqs_recovered

    def counter_deltas(self, counters: dict[str, int] | None) -> dict[str, int]:
        """What this write adds to the ``counters`` table, with the caller's own ``counters``."""
        deltas = dict(counters or {})
        deltas["stored.predictions"] = self.predictions_stored
        deltas["duplicates.predictions"] = self.duplicates
        deltas["gaps.recovered_seqs"] = self.seqs_recovered
        if self.refused:
            deltas["rejected.invalid"] = deltas.get("rejected.invalid", 0) + len(self.refused)
        return deltas


_INSERT_PRED = f"INSERT OR IGNORE INTO predictions({PRED_COLS}) VALUES ({','.join('?' * 17)})"
_INSERT_TEL = f"INSERT OR IGNORE INTO telemetry({TEL_COLS}) VALUES ({','.join('?' * 19)})"

_TOUCH_DEVICE = (
    "INSERT INTO devices(device, site, first_seen, last_seen, last_msg_ts) VALUES (?,?,?,?,?) "
    "ON CONFLICT(device) DO UPDATE SET site=excluded.site, "
    "last_seen=max(coalesce(last_seen, 0), excluded.last_seen), "
    "last_msg_ts=max(coalesce(last_msg_ts, 0), excluded.last_msg_ts)"
)
# A retained status or model state replayed by the broker when ingest (re)subscribes says what
# the device last said, not that it said it now: it must not make a silent box look alive.
_TOUCH_DEVICE_REPLAY = (
    "INSERT INTO devices(device, site, first_seen, last_seen, last_msg_ts) VALUES (?,?,?,?,?) "
    "ON CONFLICT(device) DO NOTHING"
)
_INSERT_GAP = "INSERT INTO gaps(device, site, first_seq, last_seq, cause, detected_ts) VALUES (?,?,?,?,?,?)"


class BatchWriter:
    """Owns one connection (``synchronous=FULL``); used by the single ingest writer thread."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.conn: sqlite3.Connection = db.conn

    def write(
        self,
        items: list[Incoming],
        counters: dict[str, int] | None = None,
        progress: tuple[str, str, int] | None = None,
        dead_letters: list[DeadLetter] | None = None,
        isolate: bool = False,
        facts: BatchFacts | None = None,
    ) -> WriteResult:
        """Store ``items``, ``dead_letters``, ``counters``, the inbox ``progress`` mark (worker,
        inbox id, last row id) and the worker's counters (``facts``, with ``progress``) in one
        transaction: all or nothing, so a batch is applied and counted once.

        ``isolate`` writes each item under its own savepoint and turns an item the database refuses
        into a dead letter (``WriteResult.refused``) instead of failing the batch; the caller uses
        it after a :class:`BadRecord`. Raises :class:`FleetError` for a locked, full or broken
        database (retry later) and :class:`BadRecord` for values it refuses (isolate).
        """
        res = WriteResult(messages=len(items))
        try:
            with self.conn:
                if isolate:
                    self._write_isolated(items, res)
                elif items:
                    self._write(items, res)
                letters = [*(dead_letters or []), *res.refused]
                if letters:
                    self._dead_letters(progress[0] if progress else "", letters)
                if progress is not None:
                    self.conn.execute(UPSERT_PROGRESS, progress)
                    if facts is not None:
                        add_batch(
                            self.conn,
                            False,
                            progress[0],
                            facts,
                            res.predictions_stored,
                            res.duplicates,
                            len(letters),
                        )
                self._add_counters(res.counter_deltas(counters))
        except _RECORD_ERRORS as e:
            raise BadRecord(f"the fleet database refused a record of this batch: {e}") from e
        except sqlite3.Error as e:
            raise FleetError(
                f"fleet database write failed ({e}); the rows stay in the ingest inbox and are retried"
            ) from e
        return res

    def _write_isolated(self, items: list[Incoming], res: WriteResult) -> None:
        c = self.conn
        if not c.in_transaction:
            # Else the first SAVEPOINT would open a transaction of its own and RELEASE commit it:
            # each item durable alone, and a failure later in the batch would apply them twice.
            c.execute("BEGIN")
        for it in items:
            one = WriteResult(messages=1)
            c.execute("SAVEPOINT item")
            try:
                self._write([it], one)
            except _RECORD_ERRORS as e:
                c.execute("ROLLBACK TO item")
                c.execute("RELEASE item")
                res.refused.append(
                    DeadLetter(it.raw_topic, "invalid", f"cannot be stored: {e}", it.received_ts, it.payload)
                )
                continue
            c.execute("RELEASE item")
            res.merge(one)

    def progress(self, worker: str) -> tuple[str, int]:
        """(inbox id, last applied inbox row id) of ``worker``; ("", 0) before its first batch."""
        row = self.conn.execute(SELECT_PROGRESS, (worker,)).fetchone()
        return (str(row[0]), int(row[1])) if row else ("", 0)

    def _dead_letters(self, worker: str, letters: list[DeadLetter]) -> None:
        self.conn.executemany(INSERT_DEAD_LETTER, dead_letter_rows(worker, letters))

    def _write(self, items: list[Incoming], res: WriteResult) -> None:
        c = self.conn
        batches: dict[str, list[tuple[PredictionBatch, float]]] = defaultdict(list)
        for it in items:
            m = it.msg
            site = it.topic.site or ""
            device = it.topic.device or ""
            ts = float(getattr(m, "ts", 0.0) or 0.0)
            if isinstance(m, PredictionBatch):
                ts = max(p.ts for p in m.predictions)
                batches[device].append((m, it.received_ts))
            if it.retained:
                said = min(ts, it.received_ts) if ts else it.received_ts  # when the device said it
                c.execute(_TOUCH_DEVICE_REPLAY, (device, site, said, said, ts))
            else:
                c.execute(_TOUCH_DEVICE, (device, site, it.received_ts, it.received_ts, ts))
            if isinstance(m, Telemetry):
                res.telemetry_stored += self._telemetry(m, it.received_ts)
            elif isinstance(m, DeviceStatus):
                if it.retained and self._known_status(m):
                    # A replay of the state already stored: no new event, no new "since"; what the
                    # box reports about itself may still be news (changed while we were away).
                    self._status_details(m)
                    continue
                self._status(m, it.received_ts)
            elif isinstance(m, ModelState):
                self._model_state(m, it.received_ts)
        for device, blist in batches.items():
            self._predictions(device, blist, res)

    def _predictions(self, device: str, blist: list[tuple[PredictionBatch, float]], res: WriteResult) -> None:
        c = self.conn
        row = c.execute("SELECT max_seq, evicted_total FROM devices WHERE device=?", (device,)).fetchone()
        site = blist[0][0].site
        walk = SeqWalk(device, site, row[0], row[1] or 0)
        stored = 0
        tally = Tally()
        for b, received in sorted(blist, key=lambda x: x[0].predictions[0].seq):
            # Only a seq at or below the highest stored can already be there (a redelivery, an
            # outbox resending): those are looked up, so the outcome counts take new rows only.
            max_before = walk.max_seq
            again = [p.seq for p in b.predictions if max_before is not None and p.seq <= max_before]
            there = self._existing(device, again) if again else set()
            walk.batch(b, received)
            cur = c.executemany(_INSERT_PRED, [prediction_row(b, p, received) for p in b.predictions])
            stored += max(cur.rowcount, 0)
            tally.add(b, there)
        if tally.hours:
            c.executemany(UPSERT_OUTCOMES, tally.rows(device, site))
        n = sum(len(b.predictions) for b, _ in blist)
        res.predictions_stored += stored
        res.duplicates += n - stored
        res.gaps_opened += [(device, g[2], g[3]) for g in walk.opened]
        plan = plan_fill(self._gaps(device, walk.late), walk.opened, walk.late)
        self._apply_fill(device, plan)
        res.seqs_recovered += len(plan.recovered)
        c.execute(
            "UPDATE devices SET max_seq=?, evicted_total=max(evicted_total, ?), "
            "predictions_total=predictions_total+?, model_version=coalesce(?, model_version) WHERE device=?",
            (
                walk.max_seq,
                max(b.evicted_total for b, _ in blist),
                stored,
                blist[-1][0].predictions[-1].model_version,
                device,
            ),
        )

    def _existing(self, device: str, seqs: list[int]) -> set[int]:
        found: set[int] = set()
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self.conn.execute(
                    f"SELECT seq FROM predictions WHERE device=? AND seq IN ({marks})", (device, *chunk)
                )
            )
        return found

    def _gaps(self, device: str, late: list[int]) -> list[tuple[int, str, int, int, str, float]]:
        """The stored gaps that ``late`` seqs may fall into (none to read when nothing is late)."""
        if not late:
            return []
        return self.conn.execute(
            "SELECT id, site, first_seq, last_seq, cause, detected_ts FROM gaps "
            "WHERE device=? AND last_seq>=? AND first_seq<=?",
            (device, min(late), max(late)),
        ).fetchall()

    def _apply_fill(self, device: str, plan: FillPlan) -> None:
        """The new gaps (already shrunk by late rows) and the changes to stored ones."""
        c = self.conn
        if plan.delete:
            c.executemany("DELETE FROM gaps WHERE id=?", [(i,) for i in plan.delete])
        if plan.update:
            c.executemany("UPDATE gaps SET first_seq=?, last_seq=? WHERE id=?", plan.update)
        if plan.insert:
            c.executemany(_INSERT_GAP, [(device, *g[1:]) for g in plan.insert])

    def _telemetry(self, t: Telemetry, received: float) -> int:
        cur = self.conn.execute(_INSERT_TEL, telemetry_row(t, received))
        if t.model_version:
            self.conn.execute(
                "UPDATE devices SET model_version=? WHERE device=?", (t.model_version, t.device)
            )
        return max(cur.rowcount, 0)

    def _known_status(self, s: DeviceStatus) -> bool:
        row = self.conn.execute(SELECT_STATUS, (s.device,)).fetchone()
        return row is not None and (row[0], row[1]) == (s.state, s.reason)

    def _status_details(self, s: DeviceStatus) -> None:
        self.conn.execute(UPDATE_STATUS_DETAILS, (s.software, s.model_version, s.device))

    def _status(self, s: DeviceStatus, received: float) -> None:
        event, update = status_rows(s, received)
        self.conn.execute(INSERT_STATUS_EVENT, event)
        self.conn.execute(UPDATE_STATUS, update)

    def _model_state(self, m: ModelState, received: float) -> None:
        event, update = model_state_rows(m, received)
        self.conn.execute(INSERT_MODEL_STATE, event)
        self.conn.execute(UPDATE_MODEL_STATE, update)

    def _add_counters(self, counts: dict[str, int]) -> None:
        if any(counts.values()):
            self.conn.executemany(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
                [(k, v) for k, v in counts.items() if v],
            )
