"""The ingest write path on PostgreSQL: one transaction per batch, predictions by COPY.

Same contract as :class:`cloud.fleet.writer.BatchWriter` (the materializer cannot tell them
apart): ``write`` stores a batch of decoded messages, dead letters, counters and the inbox
progress mark all-or-nothing; ``progress`` says where a worker got to.

Several writers at once (one materializer per ingest host): every batch first takes a
transaction-scoped advisory lock per device it touches, in one global order (so two writers
never deadlock), then reads the device's ``max_seq`` and gaps and decides which predictions are
new. Two batches for one device are thus applied one after the other, exactly as SQLite's single
write lock does, and gap detection sees each seq once. Batches for different devices proceed in
parallel. New rows go by ``COPY`` into a per-connection staging table, then into the partitioned
``predictions`` with ``ON CONFLICT DO NOTHING`` (idempotent by (device, seq) within a day; across
days the max_seq/gap decision is what excludes a redelivery, see pg_ddl.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import psycopg

from cloud.fleet.backends.pg import raw_connect
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.materializer_stats import BatchFacts, add_batch
from cloud.fleet.writer import (
    _UPSERT_OUTCOMES,
    CAUSE_BEFORE,
    CAUSE_EVICTED,
    CAUSE_LOST,
    DEAD_LETTER_MAX_BYTES,
    FIRST_SEQ,
    DeadLetter,
    Incoming,
    WriteResult,
    _enc,
    _ir_flags,
    _probs_json,
    _regions_json,
    _Tally,
    _temp_max,
)
from shared.protocol import DeviceStatus, ModelState, PredictionBatch, Telemetry

DAY_S = 86400
# The SQLite upsert with the target table named where PostgreSQL needs it.
_UPSERT_OUTCOMES_PG = (
    _UPSERT_OUTCOMES.replace("?", "%s")
    .replace("DO UPDATE SET n=n+", "DO UPDATE SET n=outcome_hours.n+")
    .replace("n_cat=n_cat+", "n_cat=outcome_hours.n_cat+")
    .replace("n_dog=n_dog+", "n_dog=outcome_hours.n_dog+")
    .replace("n_other=n_other+", "n_other=outcome_hours.n_other+")
    .replace("n_none=n_none+", "n_none=outcome_hours.n_none+")
    .replace("n_abstain=n_abstain+", "n_abstain=outcome_hours.n_abstain+")
    .replace("n_ir=n_ir+", "n_ir=outcome_hours.n_ir+")
    .replace("n_day=n_day+", "n_day=outcome_hours.n_day+")
)


def day_of(ts: float) -> int:
    return int(ts // DAY_S)


_PRED_COLS = (
    "device, seq, site, camera, ts, label, confidence, probs, model_version, abstain, flags, latency_ms, "
    "frame_ts, snapshot, received_ts, day, regions, ir"
)
_TEL_COLS = (
    "device, ts, site, seq, cpu_percent, memory_percent, disk_percent, temp_max, latency_p50, latency_p95, "
    "latency_p99, inference_fps, inference_errors, abstain_rate, outbox_backlog, outbox_evicted, "
    "model_version, body, received_ts, day"
)
_RECORD_ERRORS = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    ValueError,
    TypeError,
    OverflowError,
)


class _PgDb:
    """``writer.db`` for the materializer (it only closes it)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def close(self) -> None:
        self.conn.close()


class PgBatchWriter:
    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self.db = _PgDb(self._connect())

    def _connect(self) -> psycopg.Connection[Any]:
        self.conn: psycopg.Connection[Any] = raw_connect(self.target)  # autocommit; transactions explicit
        self._days: set[tuple[str, int]] = set()
        self.conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS pred_stage AS SELECT {_PRED_COLS} FROM predictions WITH NO DATA"
        )
        self.conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS tel_stage AS SELECT {_TEL_COLS} FROM telemetry WITH NO DATA"
        )
        return self.conn

    def _reconnect_if_broken(self) -> None:
        """After a lost connection (server restart, fail-over to the replica) the next batch opens
        a new one; the batch that failed was rolled back and is still in the inbox."""
        if self.conn.broken or self.conn.closed:
            self.conn.close()
            self.db.conn = self._connect()  # raises FleetError while the server is unreachable

    # partitions ------------------------------------------------------------------------------
    def ensure_days(self, table: str, days: set[int]) -> None:
        """Day partitions for ``days`` (and the day after, so midnight finds it ready), each in a
        short transaction of its own: creating one locks the parent table exclusively."""
        for d in sorted(days):
            for day in (d, d + 1):
                if (table, day) in self._days:
                    continue
                self.conn.execute("SELECT parkwatch_ensure_day(%s, %s)", (table, day))
                self._days.add((table, day))

    # the batch -------------------------------------------------------------------------------
    def write(
        self,
        items: list[Incoming],
        counters: dict[str, int] | None = None,
        progress: tuple[str, str, int] | None = None,
        dead_letters: list[DeadLetter] | None = None,
        isolate: bool = False,
        facts: BatchFacts | None = None,
    ) -> WriteResult:
        res = WriteResult(messages=len(items))
        self._reconnect_if_broken()
        try:
            days = {day_of(it.received_ts) for it in items}
            if days:
                self.ensure_days("predictions", days)
                self.ensure_days("telemetry", days)
            with self.conn.transaction():
                if items:
                    self._lock_devices(items)
                    if isolate:
                        self._write_isolated(items, res)
                    else:
                        self._write(items, res)
                letters = [*(dead_letters or []), *res.refused]
                if letters:
                    with self.conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO dead_letters(worker, topic, kind, reason, received_ts, payload) "
                            "VALUES (%s,%s,%s,%s,%s,%s)",
                            [
                                (
                                    progress[0] if progress else "",
                                    d.topic,
                                    d.kind,
                                    d.reason,
                                    d.received_ts,
                                    d.payload[:DEAD_LETTER_MAX_BYTES],
                                )
                                for d in letters
                            ],
                        )
                if progress is not None:
                    self.conn.execute(
                        "INSERT INTO inbox_progress(worker, inbox_id, upto) VALUES (%s, %s, %s) "
                        "ON CONFLICT(worker) DO UPDATE SET inbox_id=excluded.inbox_id, upto=excluded.upto",
                        progress,
                    )
                    if facts is not None:
                        add_batch(
                            self.conn,
                            True,
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
                rows = sorted((k, v) for k, v in deltas.items() if v)
                if rows:
                    with self.conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO counters(name, value) VALUES (%s, %s) "
                            "ON CONFLICT(name) DO UPDATE SET value=counters.value+excluded.value",
                            rows,
                        )
        except _RECORD_ERRORS as e:
            raise BadRecord(f"the fleet database refused a record of this batch: {e}") from e
        except psycopg.Error as e:
            raise FleetError(
                f"fleet database write failed ({str(e).strip()}); the rows stay in the ingest inbox and "
                "are retried"
            ) from e
        return res

    def _lock_devices(self, items: list[Incoming]) -> None:
        devices = sorted({it.topic.device or "" for it in items})
        # One global order (by the lock key) for every writer: no two can wait on each other.
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(d, 0) AS k "
            "FROM unnest(%s::text[]) AS d ORDER BY 1) AS s",
            (devices,),
        )

    def _write_isolated(self, items: list[Incoming], res: WriteResult) -> None:
        for it in items:
            one = WriteResult(messages=1)
            try:
                with self.conn.transaction():  # a savepoint inside the batch's transaction
                    self._write([it], one)
            except _RECORD_ERRORS as e:
                res.refused.append(
                    DeadLetter(it.raw_topic, "invalid", f"cannot be stored: {e}", it.received_ts, it.payload)
                )
                continue
            res.merge(one)

    def progress(self, worker: str) -> tuple[str, int]:
        row = self.conn.execute(
            "SELECT inbox_id, upto FROM inbox_progress WHERE worker=%s", (worker,)
        ).fetchone()
        return (str(row[0]), int(row[1])) if row else ("", 0)

    def _write(self, items: list[Incoming], res: WriteResult) -> None:
        c = self.conn
        touch: dict[str, list[Any]] = {}  # device -> [site, first, last, last_msg_ts]
        replay: dict[str, list[Any]] = {}
        batches: dict[str, list[tuple[PredictionBatch, float]]] = defaultdict(list)
        telemetry: list[tuple[Telemetry, float]] = []
        for it in items:
            m = it.msg
            site = it.topic.site or ""
            device = it.topic.device or ""
            ts = float(getattr(m, "ts", 0.0) or 0.0)
            if isinstance(m, PredictionBatch):
                ts = max(p.ts for p in m.predictions)
                batches[device].append((m, it.received_ts))
            if it.retained:
                said = min(ts, it.received_ts) if ts else it.received_ts
                replay.setdefault(device, [site, said, said, ts])
            else:
                t = touch.get(device)
                if t is None:
                    touch[device] = [site, it.received_ts, it.received_ts, ts]
                else:
                    t[0] = site
                    t[2] = max(t[2], it.received_ts)
                    t[3] = max(t[3], ts)
            if isinstance(m, Telemetry):
                telemetry.append((m, it.received_ts))
        with c.cursor() as cur:
            if replay:
                cur.executemany(
                    "INSERT INTO devices(device, site, first_seen, last_seen, last_msg_ts) VALUES "
                    "(%s,%s,%s,%s,%s) ON CONFLICT(device) DO NOTHING",
                    [(d, *v) for d, v in sorted(replay.items())],
                )
            if touch:
                cur.executemany(
                    "INSERT INTO devices(device, site, first_seen, last_seen, last_msg_ts) VALUES "
                    "(%s,%s,%s,%s,%s) ON CONFLICT(device) DO UPDATE SET site=excluded.site, "
                    "last_seen=greatest(coalesce(devices.last_seen, 0), excluded.last_seen), "
                    "last_msg_ts=greatest(coalesce(devices.last_msg_ts, 0), excluded.last_msg_ts)",
                    [(d, *v) for d, v in sorted(touch.items())],
                )
        if telemetry:
            res.telemetry_stored += self._telemetry(telemetry)
        for it in items:
            m = it.msg
            if isinstance(m, DeviceStatus):
                if it.retained and self._known_status(m):
                    self._status_details(m)
                    continue
                self._status(m, it.received_ts)
            elif isinstance(m, ModelState):
                self._model_state(m, it.received_ts)
        if batches:
            self._predictions(batches, res)

    # predictions -----------------------------------------------------------------------------
    def _predictions(self, batches: dict[str, list[tuple[PredictionBatch, float]]], res: WriteResult) -> None:
        c = self.conn
        devs = sorted(batches)
        state = {
            r[0]: (r[1], int(r[2] or 0))
            for r in c.execute(
                "SELECT device, max_seq, evicted_total FROM devices WHERE device = ANY(%s)", (devs,)
            ).fetchall()
        }
        rows: list[tuple[Any, ...]] = []
        expected: dict[str, int] = {}
        new_gaps: list[tuple[str, str, int, int, str, float]] = []
        late: dict[str, list[int]] = {}
        updates: list[tuple[Any, ...]] = []
        for device in devs:
            blist = batches[device]
            max_seq, evicted = state.get(device, (None, 0))
            site = blist[0][0].site
            gaps: list[tuple[int, int]] | None = None
            seen: set[int] = set()
            n = 0
            for b, received in sorted(blist, key=lambda x: x[0].predictions[0].seq):
                day = day_of(received)
                for p in b.predictions:
                    n += 1
                    if p.seq in seen:
                        continue
                    is_new = True
                    if max_seq is None:
                        if p.seq > FIRST_SEQ:
                            cause = CAUSE_EVICTED if b.evicted_total else CAUSE_BEFORE
                            new_gaps.append((device, site, FIRST_SEQ, p.seq - 1, cause, received))
                            if gaps is not None:
                                gaps.append((FIRST_SEQ, p.seq - 1))
                        max_seq = p.seq
                    elif p.seq > max_seq:
                        if p.seq > max_seq + 1:
                            cause = CAUSE_EVICTED if b.evicted_total > evicted else CAUSE_LOST
                            new_gaps.append((device, site, max_seq + 1, p.seq - 1, cause, received))
                            if gaps is not None:
                                gaps.append((max_seq + 1, p.seq - 1))
                        max_seq = p.seq
                    else:
                        if gaps is None:
                            gaps = [
                                (int(g[0]), int(g[1]))
                                for g in c.execute(
                                    "SELECT first_seq, last_seq FROM gaps WHERE device=%s", (device,)
                                ).fetchall()
                            ] + [(g[2], g[3]) for g in new_gaps if g[0] == device]
                        is_new = any(lo <= p.seq <= hi for lo, hi in gaps)
                        if is_new:
                            late.setdefault(device, []).append(p.seq)
                    if not is_new:
                        continue
                    seen.add(p.seq)
                    ir, flags = _ir_flags(p)
                    rows.append(
                        (
                            device,
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
                            day,
                            _regions_json(p),
                            ir,
                        )
                    )
                evicted = max(evicted, b.evicted_total)
            expected[device] = n
            updates.append(
                (
                    max_seq,
                    max(b.evicted_total for b, _ in blist),
                    blist[-1][0].predictions[-1].model_version,
                    device,
                )
            )
        stored: dict[str, int] = {}
        copied = rows
        if rows:
            try:
                # The rows were judged new under the devices' locks: COPY them straight into the
                # table, in a savepoint. Only if one exists after all (a device row deleted and
                # recreated, say) does the slower path below sort them out row by row.
                with (
                    c.transaction(),
                    c.cursor() as cur,
                    cur.copy(f"COPY predictions ({_PRED_COLS}) FROM STDIN") as cp,
                ):
                    for r in rows:
                        cp.write_row(r)
                for r in rows:
                    stored[r[0]] = stored.get(r[0], 0) + 1
                copied, rows = rows, []
            except psycopg.errors.UniqueViolation:
                pass
        if rows:
            with c.cursor() as cur:
                with cur.copy(f"COPY pred_stage ({_PRED_COLS}) FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
                cur.execute(
                    f"WITH ins AS (INSERT INTO predictions ({_PRED_COLS}) "
                    f"SELECT {_PRED_COLS} FROM pred_stage ON CONFLICT DO NOTHING RETURNING device, seq) "
                    "SELECT device, seq FROM ins"
                )
                inserted = {(str(d), int(s)) for d, s in cur.fetchall()}
                for d, _ in inserted:
                    stored[d] = stored.get(d, 0) + 1
                rows = [r for r in rows if (r[0], r[1]) in inserted]
                cur.execute("TRUNCATE pred_stage")
                copied = rows
        with c.cursor() as cur:
            if new_gaps:
                cur.executemany(
                    "INSERT INTO gaps(device, site, first_seq, last_seq, cause, detected_ts) "
                    "VALUES (%s,%s,%s,%s,%s,%s)",
                    new_gaps,
                )
                res.gaps_opened += [(g[0], g[2], g[3]) for g in new_gaps]
            for device, seqs in late.items():
                res.seqs_recovered += self._fill(device, seqs)
            cur.executemany(
                "UPDATE devices SET max_seq=%s, evicted_total=greatest(evicted_total, %s), "
                "predictions_total=predictions_total+%s, model_version=coalesce(%s, model_version) "
                "WHERE device=%s",
                [(u[0], u[1], stored.get(u[3], 0), u[2], u[3]) for u in updates],
            )
        self._outcomes(batches, copied)
        total = sum(stored.values())
        res.predictions_stored += total
        res.duplicates += sum(expected.values()) - total

    def _outcomes(
        self, batches: dict[str, list[tuple[PredictionBatch, float]]], inserted: list[tuple[Any, ...]]
    ) -> None:
        """The hourly outcome counts (``outcome_hours``) of the rows this batch really inserted."""
        new: dict[str, set[int]] = {}
        for r in inserted:
            new.setdefault(r[0], set()).add(r[1])
        upserts: list[tuple[Any, ...]] = []
        for device in sorted(batches):
            todo = new.get(device, set())
            if not todo:
                continue
            tally = _Tally()
            for b, _ in batches[device]:
                seqs = {p.seq for p in b.predictions}
                tally.add(b, seqs - todo)
                todo = todo - seqs  # a seq sent twice in this batch is counted once
            upserts += [(device, h, batches[device][0][0].site, *v) for h, v in sorted(tally.hours.items())]
        if upserts:
            with self.conn.cursor() as cur:
                cur.executemany(_UPSERT_OUTCOMES_PG, upserts)

    def _fill(self, device: str, seqs: list[int]) -> int:
        c = self.conn
        recovered = 0
        for seq in sorted(set(seqs)):
            g = c.execute(
                "SELECT id, site, first_seq, last_seq, cause, detected_ts FROM gaps "
                "WHERE device=%s AND first_seq<=%s AND last_seq>=%s",
                (device, seq, seq),
            ).fetchone()
            if g is None:
                continue
            gid, site, first, last, cause, detected = g
            recovered += 1
            if first == last:
                c.execute("DELETE FROM gaps WHERE id=%s", (gid,))
            elif seq == first:
                c.execute("UPDATE gaps SET first_seq=%s WHERE id=%s", (seq + 1, gid))
            elif seq == last:
                c.execute("UPDATE gaps SET last_seq=%s WHERE id=%s", (seq - 1, gid))
            else:
                c.execute("UPDATE gaps SET last_seq=%s WHERE id=%s", (seq - 1, gid))
                c.execute(
                    "INSERT INTO gaps(device, site, first_seq, last_seq, cause, detected_ts) VALUES "
                    "(%s,%s,%s,%s,%s,%s)",
                    (device, site, seq + 1, last, cause, detected),
                )
        return recovered

    # telemetry, status, model state ------------------------------------------------------------
    def _telemetry(self, items: list[tuple[Telemetry, float]]) -> int:
        rows = []
        for t, received in items:
            lat = t.latency_ms
            rows.append(
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
                    day_of(received),
                )
            )
        with self.conn.cursor() as cur:
            # COPY into the staging table, then one INSERT: a fleet reporting every minute is
            # thousands of rows per batch, too many for a statement each.
            with cur.copy(f"COPY tel_stage ({_TEL_COLS}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            cur.execute(
                f"WITH ins AS (INSERT INTO telemetry ({_TEL_COLS}) SELECT {_TEL_COLS} FROM tel_stage "
                "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
            )
            got = cur.fetchone()
            stored = int(got[0]) if got else 0
            cur.execute("TRUNCATE tel_stage")
            latest: dict[str, str] = {}
            for t, _ in items:
                if t.model_version:
                    latest[t.device] = t.model_version
            if latest:
                cur.executemany(
                    "UPDATE devices SET model_version=%s WHERE device=%s",
                    [(v, d) for d, v in sorted(latest.items())],
                )
        return stored

    def _known_status(self, s: DeviceStatus) -> bool:
        row = self.conn.execute(
            "SELECT status, status_reason FROM devices WHERE device=%s", (s.device,)
        ).fetchone()
        return row is not None and (row[0], row[1]) == (s.state, s.reason)

    def _status_details(self, s: DeviceStatus) -> None:
        self.conn.execute(
            "UPDATE devices SET software=coalesce(%s, software), "
            "model_version=coalesce(%s, model_version) WHERE device=%s",
            (s.software, s.model_version, s.device),
        )

    def _status(self, s: DeviceStatus, received: float) -> None:
        ts = received if s.reason == "last-will" else s.ts
        self.conn.execute(
            "INSERT INTO status_events(device, ts, state, reason, received_ts) VALUES (%s,%s,%s,%s,%s) "
            "ON CONFLICT DO NOTHING",
            (s.device, ts, s.state, s.reason, received),
        )
        self.conn.execute(
            "UPDATE devices SET status=%s, status_ts=%s, status_reason=%s, status_rx=%s, "
            "software=coalesce(%s, software), model_version=coalesce(%s, model_version) "
            "WHERE device=%s AND (status_rx IS NULL OR status_rx<=%s)",
            (s.state, ts, s.reason, received, s.software, s.model_version, s.device, received),
        )

    def _model_state(self, m: ModelState, received: float) -> None:
        self.conn.execute(
            "INSERT INTO model_states(device, ts, state, version, active_version, reason, received_ts) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            (m.device, m.ts, m.state, m.version, m.active_version, m.reason, received),
        )
        self.conn.execute(
            "UPDATE devices SET update_state=%s, update_version=%s, "
            "active_version=coalesce(%s, active_version), "
            "previous_version=coalesce(%s, previous_version), update_reason=%s, update_progress=%s, "
            "update_ts=%s, model_version=coalesce(%s, model_version) "
            "WHERE device=%s AND (update_ts IS NULL OR update_ts<=%s)",
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
