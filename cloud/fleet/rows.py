"""What the two ingest writers (SQLite: cloud/fleet/writer.py, PostgreSQL:
cloud/fleet/backends/pg_writer.py) have in common: the rows they build from a message, the
sequence walk that opens gaps, the plan that closes them, and the hourly outcome tally.

Why one module: the two backends must store exactly the same rows and judge gaps exactly alike
(the tests run on both, and bench/seed_pages.py fills a store with these very functions), so a
fix to one writer cannot silently miss the other. Only the SQL execution differs per backend.

Everything here is pure (no I/O): the writers run the statements.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from shared.protocol import (
    IR_FLAG,
    NONE_LABEL,
    DeviceStatus,
    ModelState,
    Prediction,
    PredictionBatch,
    Telemetry,
)

FIRST_SEQ = 1  # edge/outbox.py numbers predictions from 1

CAUSE_LOST = "lost in transit"
CAUSE_EVICTED = "evicted on the device (outbox bound)"
CAUSE_BEFORE = "before first contact"

# Column order of a prediction / telemetry row as built below (PostgreSQL appends ``day``).
PRED_COLS = (
    "device, seq, site, camera, ts, label, confidence, probs, model_version, abstain, flags, latency_ms, "
    "frame_ts, snapshot, received_ts, regions, ir"
)
TEL_COLS = (
    "device, ts, site, seq, cpu_percent, memory_percent, disk_percent, temp_max, latency_p50, latency_p95, "
    "latency_p99, inference_fps, inference_errors, abstain_rate, outbox_backlog, outbox_evicted, "
    "model_version, body, received_ts"
)

# One encoder instance: json.dumps with separators builds a new encoder per call, which was a
# third of the write path for these small dicts.
enc = json.JSONEncoder(separators=(",", ":")).encode


def probs_json(probs: dict[str, float]) -> str:
    """orjson: a sixth of the cost of json's encoder (a row per prediction, 200 per message). The
    stored text may spell a small float as ``0.00001`` where json wrote ``1e-05``: readers parse
    it, no query looks inside it, and PostgreSQL's jsonb normalises numbers anyway."""
    return orjson.dumps(probs).decode("utf-8")


def regions_json(p: Prediction) -> str | None:
    """The regions that held a pet, as sent (``box`` [x, y, w, h] in frame pixels, label,
    confidence); None for a frame without any (``none``, abstain, or a box that sends none)."""
    if not p.regions:
        return None
    return orjson.dumps([r.model_dump(mode="json") for r in p.regions]).decode("utf-8")


def ir_flags(p: Prediction) -> tuple[int | None, list[str]]:
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


def prediction_row(b: PredictionBatch, p: Prediction, received: float) -> tuple[object, ...]:
    """One ``predictions`` row (PRED_COLS order)."""
    ir, flags = ir_flags(p)
    return (
        b.device,
        p.seq,
        b.site,
        p.camera,
        p.ts,
        p.label,
        p.confidence,
        probs_json(p.probs) if p.probs else None,
        p.model_version,
        int(p.abstain),
        enc(flags) if flags else None,
        p.latency_ms,
        p.frame_ts,
        p.snapshot,
        received,
        regions_json(p),
        ir,
    )


def temp_max(t: Telemetry) -> float | None:
    return max(t.temperatures.values()) if t.temperatures else None


def telemetry_row(t: Telemetry, received: float) -> tuple[object, ...]:
    """One ``telemetry`` row (TEL_COLS order); ``body`` keeps the whole message."""
    lat = t.latency_ms
    return (
        t.device,
        t.ts,
        t.site,
        t.seq,
        t.cpu_percent,
        t.memory_percent,
        t.disk_percent,
        temp_max(t),
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
    )


# Status and model state: the same statements on both backends (PostgreSQL runs them through
# cloud.fleet.backends.pg.translate: placeholders, INSERT OR IGNORE).
INSERT_STATUS_EVENT = (
    "INSERT OR IGNORE INTO status_events(device, ts, state, reason, received_ts) VALUES (?,?,?,?,?)"
)
# Every worker stores every status (see service.py), so a worker whose inbox lags must not put
# back a state another worker has already replaced: the later arrival wins.
UPDATE_STATUS = (
    "UPDATE devices SET status=?, status_ts=?, status_reason=?, status_rx=?, "
    "software=coalesce(?, software), model_version=coalesce(?, model_version) "
    "WHERE device=? AND (status_rx IS NULL OR status_rx<=?)"
)
UPDATE_STATUS_DETAILS = (
    "UPDATE devices SET software=coalesce(?, software), model_version=coalesce(?, model_version) "
    "WHERE device=?"
)
SELECT_STATUS = "SELECT status, status_reason FROM devices WHERE device=?"
INSERT_MODEL_STATE = (
    "INSERT OR IGNORE INTO model_states(device, ts, state, version, active_version, reason, received_ts) "
    "VALUES (?,?,?,?,?,?,?)"
)
UPDATE_MODEL_STATE = (
    "UPDATE devices SET update_state=?, update_version=?, active_version=coalesce(?, active_version), "
    "previous_version=coalesce(?, previous_version), update_reason=?, update_progress=?, update_ts=?, "
    "model_version=coalesce(?, model_version) WHERE device=? AND (update_ts IS NULL OR update_ts<=?)"
)


def status_rows(s: DeviceStatus, received: float) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """(INSERT_STATUS_EVENT params, UPDATE_STATUS params).

    Arrival order decides: status comes on one non-shared subscription, in order, and a retained
    replay is by definition the newest. The payload's ts cannot decide, because a last-will is
    composed at connect time, so it is always older than the "online" it follows."""
    ts = received if s.reason == "last-will" else s.ts
    return (
        (s.device, ts, s.state, s.reason, received),
        (s.state, ts, s.reason, received, s.software, s.model_version, s.device, received),
    )


def model_state_rows(m: ModelState, received: float) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """(INSERT_MODEL_STATE params, UPDATE_MODEL_STATE params)."""
    return (
        (m.device, m.ts, m.state, m.version, m.active_version, m.reason, received),
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


# gaps -----------------------------------------------------------------------------------------
# A gap row as the writers keep it in memory: (id or None if not stored yet, site, first, last,
# cause, detected_ts).
GapRow = tuple[int | None, str, int, int, str, float]


class SeqWalk:
    """One device's predictions of one write, in seq order, against its stored ``max_seq``.

    A seq past ``max_seq + 1`` opens a gap (``opened``); a seq at or below ``max_seq`` is late
    (``late``: a redelivery, or an outbox resending a backlog), and whether it closes a gap is
    decided by :func:`plan_fill` once the whole write is walked."""

    def __init__(self, device: str, site: str, max_seq: int | None, evicted: int) -> None:
        self.device = device
        self.site = site
        self.max_seq = max_seq
        self.evicted = evicted  # the device's eviction count as of the last batch before a gap
        self.opened: list[GapRow] = []
        self.late: list[int] = []

    def batch(self, b: PredictionBatch, received: float) -> set[int]:
        """Walk one batch (call in order of first seq); returns its late seqs."""
        late: set[int] = set()
        max_seq = self.max_seq
        for p in b.predictions:
            seq = p.seq
            if max_seq is None:
                if seq > FIRST_SEQ:
                    cause = CAUSE_EVICTED if b.evicted_total else CAUSE_BEFORE
                    self.opened.append((None, self.site, FIRST_SEQ, seq - 1, cause, received))
                max_seq = seq
            elif seq > max_seq:
                if seq > max_seq + 1:
                    # Judged per gap: only a batch that reports evictions since the one before it
                    # explains the seqs missing in front of it.
                    cause = CAUSE_EVICTED if b.evicted_total > self.evicted else CAUSE_LOST
                    self.opened.append((None, self.site, max_seq + 1, seq - 1, cause, received))
                max_seq = seq
            else:
                late.add(seq)
        self.max_seq = max_seq
        self.evicted = max(self.evicted, b.evicted_total)
        if late:
            self.late.extend(late)
        return late


@dataclass
class FillPlan:
    """What late seqs do to one device's gaps: the statements to run, and which seqs came back."""

    recovered: set[int] = field(default_factory=set)
    delete: list[int] = field(default_factory=list)  # stored gap ids
    update: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last, id)
    insert: list[GapRow] = field(default_factory=list)  # new gap rows (id None)


def plan_fill(stored: Iterable[GapRow], opened: Sequence[GapRow], late: Iterable[int]) -> FillPlan:
    """Shrink or split the gaps that late seqs fall into, in one pass for the whole write.

    ``stored`` are the device's gaps already in the database (with ids), ``opened`` the ones this
    write opened (inserted by the caller from ``insert``, so they go in already shrunk). A stored
    gap keeps its id for its first remaining piece; a gap all of whose seqs came is deleted.
    Gaps never overlap (each seq is judged once, under the device's lock), so a seq fills at most
    one. Cost: O((gaps + seqs) log seqs), whatever the pattern, instead of a statement per seq."""
    seqs = sorted(set(late))
    plan = FillPlan()
    for g in [*stored, *opened]:
        gid, site, first, last, cause, detected = g
        lo = bisect.bisect_left(seqs, first) if seqs else 0
        hi = bisect.bisect_right(seqs, last) if seqs else 0
        if lo == hi:
            if gid is None:
                plan.insert.append(g)
            continue
        inside = seqs[lo:hi]
        plan.recovered.update(inside)
        pieces: list[tuple[int, int]] = []
        start = first
        for s in inside:
            if s > start:
                pieces.append((start, s - 1))
            start = s + 1
        if start <= last:
            pieces.append((start, last))
        rest = pieces
        if gid is not None:
            if not pieces:
                plan.delete.append(gid)
                continue
            plan.update.append((pieces[0][0], pieces[0][1], gid))
            rest = pieces[1:]
        plan.insert += [(None, site, a, z, cause, detected) for a, z in rest]
    return plan


# outcome counts --------------------------------------------------------------------------------
MAX_TS = float(2**53)
_OUTCOME_COLS = {"cat": 1, "dog": 2, NONE_LABEL: 4, "neither": 4, "abstain": 5}  # else 3: other pets
UPSERT_OUTCOMES = (
    "INSERT INTO outcome_hours(device, hour, site, n, n_cat, n_dog, n_other, n_none, n_abstain, n_ir, "
    "n_day) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(device, hour) DO UPDATE SET n=n+excluded.n, "
    "site=excluded.site, n_cat=n_cat+excluded.n_cat, n_dog=n_dog+excluded.n_dog, "
    "n_other=n_other+excluded.n_other, n_none=n_none+excluded.n_none, "
    "n_abstain=n_abstain+excluded.n_abstain, n_ir=n_ir+excluded.n_ir, n_day=n_day+excluded.n_day"
)


def hour_of(ts: float) -> int:
    # Clamped: rows from before the protocol bounded timestamps (ts=1e300) still count, in a
    # far-future hour, instead of overflowing an INTEGER and losing the batch.
    return int(min(max(ts, 0.0), MAX_TS) // 3600)


class Tally:
    """Outcome counts per hour of the predictions a write really inserts (``outcome_hours``).

    In Python, one upsert per device and hour per write: an SQL trigger doing it per row cost 2.7
    times the row insert itself (16,900 against 45,500 rows/s on this 2-core machine)."""

    def __init__(self) -> None:
        # hour -> [n, cat, dog, other, none, abstain, ir, day]
        self.hours: dict[int, list[int]] = {}

    def _count(self, ts: float, label: str, abstain: bool, ir: int | bool | None) -> None:
        h = hour_of(ts)
        v = self.hours.get(h)
        if v is None:
            v = self.hours[h] = [0] * 8
        v[0] += 1
        v[5 if abstain else _OUTCOME_COLS.get(label, 3)] += 1
        if ir is not None:
            v[6 if ir else 7] += 1

    def add(self, b: PredictionBatch, skip: set[int]) -> None:
        for p in b.predictions:
            if p.seq in skip:
                continue
            ir = p.ir
            if ir is None and IR_FLAG in p.flags:
                ir = True
            self._count(p.ts, p.label, p.abstain, ir)

    def add_row(self, r: tuple[object, ...]) -> None:
        """A row from :func:`prediction_row` (ts, label, abstain, ir)."""
        self._count(r[4], r[5], bool(r[9]), r[16])  # type: ignore[arg-type]

    def rows(self, device: str, site: str) -> list[tuple[object, ...]]:
        """UPSERT_OUTCOMES params."""
        return [(device, h, site, *v) for h, v in sorted(self.hours.items())]
