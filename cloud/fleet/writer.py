"""The ingest write path: one SQLite transaction per batch of decoded messages.

Why one transaction for many messages: the broker's acknowledgement is sent only after the
commit, so the commit is the durability point, and an fsync per batch instead of per message is
what makes ingest keep up with the broker.

Gap detection lives here because it must see exactly the rows that were new: a prediction whose
seq jumps past ``max_seq + 1`` opens a gap; a late row (an outbox resending its backlog, a
redelivery after restart) that falls inside a recorded gap shrinks or splits it.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _esc

import sqlite_utils

from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.materializer_stats import BatchFacts, add_batch
from shared.protocol import (
    IR_FLAG,
    NONE_LABEL,
    DeviceStatus,
    Message,
    ModelState,
    ParsedTopic,
    Prediction,
    PredictionBatch,
    Telemetry,
)

FIRST_SEQ = 1  # edge/outbox.py numbers predictions from 1

CAUSE_LOST = "lost in transit"
CAUSE_EVICTED = "evicted on the device (outbox bound)"
CAUSE_BEFORE = "before first contact"


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


# One encoder instance: json.dumps with separators builds a new encoder per call, which was a
# third of the write path for these small dicts.
_enc = json.JSONEncoder(separators=(",", ":")).encode


def _probs_json(probs: dict[str, float]) -> str:
    """The same text as ``_enc(probs)`` at half the cost (50 of these per message): the values are
    validated finite floats, whose repr is valid JSON, and keys go through json's own escaper."""
    return "{" + ",".join([f"{_esc(k)}:{v!r}" for k, v in probs.items()]) + "}"


def _regions_json(p: Prediction) -> str | None:
    """The regions that held a pet, as sent (``box`` [x, y, w, h] in frame pixels, label,
    confidence); None for a frame without any (``none``, abstain, or a box that sends none)."""
    if not p.regions:
        return None
    return _enc([r.model_dump(mode="json") for r in p.regions])


def _ir_flags(p: Prediction) -> tuple[int | None, list[str]]:
    """The frame's lighting (1 IR, 0 day, None unknown) and its integrity flags.

    A box speaking schema 1 says "IR frame" with the flag ``ir``: it is moved to the ``ir`` column
    and out of the flags, which count integrity problems (an IR frame is not one)."""
    ir = p.ir
    flags = p.flags
    if IR_FLAG in flags:
        flags = [f for f in flags if f != IR_FLAG]
        if ir is None:
            ir = True
    return (None if ir is None else int(ir)), flags


def _pred_rows(b: PredictionBatch, received: float) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for p in b.predictions:
        ir, flags = _ir_flags(p)
        rows.append(
            (
                b.device,
                p.seq,
                b.site,
                p.camera,
                p.ts,
                p.label,
                p.confidence,
                _probs_json(p.probs) if p.probs else None,
                p.model_version,
                int(p.abstain),
                _enc(flags) if flags else None,
                p.latency_ms,
                p.frame_ts,
                p.snapshot,
                received,
                _regions_json(p),
                ir,
            )
        )
    return rows


_INSERT_PRED = (
    "INSERT OR IGNORE INTO predictions(device, seq, site, camera, ts, label, confidence, probs, "
    "model_version, abstain, flags, latency_ms, frame_ts, snapshot, received_ts, regions, ir) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)

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


def _temp_max(t: Telemetry) -> float | None:
    return max(t.temperatures.values()) if t.temperatures else None


_MAX_TS = float(2**53)
_OUTCOME_COLS = {"cat": 1, "dog": 2, NONE_LABEL: 4, "neither": 4, "abstain": 5}  # else 3: other pets
_UPSERT_OUTCOMES = (
    "INSERT INTO outcome_hours(device, hour, site, n, n_cat, n_dog, n_other, n_none, n_abstain, n_ir, "
    "n_day) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(device, hour) DO UPDATE SET n=n+excluded.n, "
    "site=excluded.site, n_cat=n_cat+excluded.n_cat, n_dog=n_dog+excluded.n_dog, "
    "n_other=n_other+excluded.n_other, n_none=n_none+excluded.n_none, "
    "n_abstain=n_abstain+excluded.n_abstain, n_ir=n_ir+excluded.n_ir, n_day=n_day+excluded.n_day"
)


class _Tally:
    """Outcome counts per hour of the predictions a write really inserts (``outcome_hours``).

    In Python, one upsert per device and hour per write: an SQL trigger doing it per row cost 2.7
    times the row insert itself (16,900 against 45,500 rows/s on this 2-core machine)."""

    def __init__(self) -> None:
        # hour -> [n, cat, dog, other, none, abstain, ir, day]
        self.hours: dict[int, list[int]] = {}

    def add(self, b: PredictionBatch, skip: set[int]) -> None:
        hours = self.hours
        for p in b.predictions:
            if p.seq in skip:
                continue
            # Clamped: rows from before the protocol bounded timestamps (ts=1e300) still count,
            # in a far-future hour, instead of overflowing SQLite's INTEGER and losing the batch.
            h = int(min(max(p.ts, 0.0), _MAX_TS) // 3600)
            v = hours.get(h)
            if v is None:
                v = hours[h] = [0] * 8
            v[0] += 1
            v[5 if p.abstain else _OUTCOME_COLS.get(p.label, 3)] += 1
            ir = p.ir
            if ir is None and IR_FLAG in p.flags:
                ir = True
            if ir is not None:
                v[6 if ir else 7] += 1

    def write(self, c: sqlite3.Connection, device: str, site: str) -> None:
        if self.hours:
            c.executemany(_UPSERT_OUTCOMES, [(device, h, site, *v) for h, v in self.hours.items()])


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
                    self.conn.execute(
                        "INSERT INTO inbox_progress(worker, inbox_id, upto) VALUES (?, ?, ?) "
                        "ON CONFLICT(worker) DO UPDATE SET inbox_id=excluded.inbox_id, upto=excluded.upto",
                        progress,
                    )
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
                deltas = dict(counters or {})
                deltas["stored.predictions"] = res.predictions_stored
                deltas["duplicates.predictions"] = res.duplicates
                deltas["gaps.recovered_seqs"] = res.seqs_recovered
                if res.refused:
                    deltas["rejected.invalid"] = deltas.get("rejected.invalid", 0) + len(res.refused)
                self._add_counters(deltas)
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
        row = self.conn.execute(
            "SELECT inbox_id, upto FROM inbox_progress WHERE worker=?", (worker,)
        ).fetchone()
        return (str(row[0]), int(row[1])) if row else ("", 0)

    def _dead_letters(self, worker: str, letters: list[DeadLetter]) -> None:
        self.conn.executemany(
            "INSERT INTO dead_letters(worker, topic, kind, reason, received_ts, payload) "
            "VALUES (?,?,?,?,?,?)",
            [
                (worker, d.topic, d.kind, d.reason, d.received_ts, d.payload[:DEAD_LETTER_MAX_BYTES])
                for d in letters
            ],
        )

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
        max_seq: int | None = row[0]
        evicted: int = row[1] or 0  # the device's eviction count as of the last batch before this gap
        site = blist[0][0].site
        late: list[int] = []
        stored = 0
        tally = _Tally()
        for b, received in sorted(blist, key=lambda x: x[0].predictions[0].seq):
            # Only a seq at or below the highest stored can already be there (a redelivery, an
            # outbox resending): those are looked up, so the outcome counts take new rows only.
            again = [p.seq for p in b.predictions if max_seq is not None and p.seq <= max_seq]
            there = self._existing(device, again) if again else set()
            cur = c.executemany(_INSERT_PRED, _pred_rows(b, received))
            stored += max(cur.rowcount, 0)
            tally.add(b, there)
            for p in b.predictions:
                if max_seq is None:
                    if p.seq > FIRST_SEQ:
                        self._open_gap(
                            device,
                            site,
                            FIRST_SEQ,
                            p.seq - 1,
                            CAUSE_EVICTED if b.evicted_total else CAUSE_BEFORE,
                            received,
                            res,
                        )
                    max_seq = p.seq
                elif p.seq > max_seq:
                    if p.seq > max_seq + 1:
                        # Judged per gap: only a batch that reports evictions since the one before
                        # it explains the seqs missing in front of it.
                        cause = CAUSE_EVICTED if b.evicted_total > evicted else CAUSE_LOST
                        self._open_gap(device, site, max_seq + 1, p.seq - 1, cause, received, res)
                    max_seq = p.seq
                else:
                    late.append(p.seq)
            evicted = max(evicted, b.evicted_total)
        tally.write(c, device, site)
        n = sum(len(b.predictions) for b, _ in blist)
        res.predictions_stored += stored
        res.duplicates += n - stored
        if late:
            res.seqs_recovered += self._fill(device, late)
        c.execute(
            "UPDATE devices SET max_seq=?, evicted_total=max(evicted_total, ?), "
            "predictions_total=predictions_total+?, model_version=coalesce(?, model_version) WHERE device=?",
            (
                max_seq,
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

    def _open_gap(
        self, device: str, site: str, first: int, last: int, cause: str, ts: float, res: WriteResult
    ) -> None:
        self.conn.execute(
            "INSERT INTO gaps(device, site, first_seq, last_seq, cause, detected_ts) VALUES (?,?,?,?,?,?)",
            (device, site, first, last, cause, ts),
        )
        res.gaps_opened.append((device, first, last))

    def _fill(self, device: str, seqs: list[int]) -> int:
        """Shrink or split recorded gaps that late rows fall into; returns how many seqs came back."""
        c = self.conn
        recovered = 0
        for seq in sorted(set(seqs)):
            g = c.execute(
                "SELECT id, site, first_seq, last_seq, cause, detected_ts FROM gaps "
                "WHERE device=? AND first_seq<=? AND last_seq>=?",
                (device, seq, seq),
            ).fetchone()
            if g is None:
                continue  # a duplicate, not a late row
            gid, site, first, last, cause, detected = g
            recovered += 1
            if first == last:
                c.execute("DELETE FROM gaps WHERE id=?", (gid,))
            elif seq == first:
                c.execute("UPDATE gaps SET first_seq=? WHERE id=?", (seq + 1, gid))
            elif seq == last:
                c.execute("UPDATE gaps SET last_seq=? WHERE id=?", (seq - 1, gid))
            else:
                c.execute("UPDATE gaps SET last_seq=? WHERE id=?", (seq - 1, gid))
                c.execute(
                    "INSERT INTO gaps(device, site, first_seq, last_seq, cause, detected_ts) VALUES "
                    "(?,?,?,?,?,?)",
                    (device, site, seq + 1, last, cause, detected),
                )
        return recovered

    def _telemetry(self, t: Telemetry, received: float) -> int:
        lat = t.latency_ms
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO telemetry(device, ts, site, seq, cpu_percent, memory_percent, "
            "disk_percent, "
            "temp_max, latency_p50, latency_p95, latency_p99, inference_fps, inference_errors, abstain_rate, "
            "outbox_backlog, outbox_evicted, model_version, body, received_ts) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                t.device,
                t.ts,
                t.site,
                t.seq,
                t.cpu_percent,
                t.memory_percent,
                t.disk_percent,
                _temp_max(t),
                lat.get("p50"),
                lat.get("p95"),
                lat.get("p99"),
                t.inference_fps,
                t.inference_errors,
                t.abstain_rate,
                t.outbox_backlog,
                t.outbox_evicted,
                t.model_version,
                json.dumps(t.to_wire(), separators=(",", ":")),
                received,
            ),
        )
        if t.model_version:
            self.conn.execute(
                "UPDATE devices SET model_version=? WHERE device=?", (t.model_version, t.device)
            )
        return max(cur.rowcount, 0)

    def _known_status(self, s: DeviceStatus) -> bool:
        row = self.conn.execute(
            "SELECT status, status_reason FROM devices WHERE device=?", (s.device,)
        ).fetchone()
        return row is not None and (row[0], row[1]) == (s.state, s.reason)

    def _status_details(self, s: DeviceStatus) -> None:
        self.conn.execute(
            "UPDATE devices SET software=coalesce(?, software), "
            "model_version=coalesce(?, model_version) WHERE device=?",
            (s.software, s.model_version, s.device),
        )

    def _status(self, s: DeviceStatus, received: float) -> None:
        # Arrival order decides: status comes on one non-shared subscription, in order, and a
        # retained replay is by definition the newest. The payload's ts cannot decide, because a
        # last-will is composed at connect time, so it is always older than the "online" it follows.
        ts = received if s.reason == "last-will" else s.ts
        self.conn.execute(
            "INSERT OR IGNORE INTO status_events(device, ts, state, reason, received_ts) VALUES (?,?,?,?,?)",
            (s.device, ts, s.state, s.reason, received),
        )
        # Every worker stores every status (see service.py), so a worker whose inbox lags must not
        # put back a state another worker has already replaced: the later arrival wins.
        self.conn.execute(
            "UPDATE devices SET status=?, status_ts=?, status_reason=?, status_rx=?, "
            "software=coalesce(?, software), model_version=coalesce(?, model_version) "
            "WHERE device=? AND (status_rx IS NULL OR status_rx<=?)",
            (s.state, ts, s.reason, received, s.software, s.model_version, s.device, received),
        )

    def _model_state(self, m: ModelState, received: float) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO model_states(device, ts, state, version, active_version, reason, "
            "received_ts) "
            "VALUES (?,?,?,?,?,?,?)",
            (m.device, m.ts, m.state, m.version, m.active_version, m.reason, received),
        )
        self.conn.execute(
            "UPDATE devices SET update_state=?, update_version=?, active_version=coalesce(?, "
            "active_version), "
            "previous_version=coalesce(?, previous_version), update_reason=?, update_progress=?, "
            "update_ts=?, "
            "model_version=coalesce(?, model_version) "
            "WHERE device=? AND (update_ts IS NULL OR update_ts<=?)",
            (
                m.state,
                m.version,
                m.active_version,
                m.previous_version,
                m.reason,
                m.progress,
                m.ts,
                m.active_version,
                m.device,
                m.ts,
            ),
        )

    def _add_counters(self, counts: dict[str, int]) -> None:
        if any(counts.values()):
            self.conn.executemany(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
                [(k, v) for k, v in counts.items() if v],
            )
