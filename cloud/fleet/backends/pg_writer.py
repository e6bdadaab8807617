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

import contextlib
from collections import defaultdict
from typing import Any

import psycopg

from cloud.fleet.backends.pg import raw_connect, translate
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.materializer_stats import BatchFacts, add_batch
from cloud.fleet.rows import (
    INSERT_MODEL_STATE,
    INSERT_STATUS_EVENT,
    PRED_COLS,
    SELECT_STATUS,
    TEL_COLS,
    UPDATE_MODEL_STATE,
    UPDATE_STATUS,
    UPDATE_STATUS_DETAILS,
    UPSERT_OUTCOMES,
    GapRow,
    SeqWalk,
    Tally,
    model_state_rows,
    plan_fill,
    prediction_row,
    status_rows,
    telemetry_row,
)
from cloud.fleet.writer import (
    INSERT_DEAD_LETTER,
    SELECT_PROGRESS,
    UPSERT_PROGRESS,
    DeadLetter,
    Incoming,
    WriteResult,
    dead_letter_rows,
)
from shared.protocol import DeviceStatus, ModelState, PredictionBatch, Telemetry

DAY_S = 86400
# The shared upsert with the target table named where PostgreSQL needs it.
_UPSERT_OUTCOMES_PG = translate(
    UPSERT_OUTCOMES.replace("DO UPDATE SET n=n+", "DO UPDATE SET n=outcome_hours.n+")
    .replace("n_cat=n_cat+", "n_cat=outcome_hours.n_cat+")
    .replace("n_dog=n_dog+", "n_dog=outcome_hours.n_dog+")
    .replace("n_other=n_other+", "n_other=outcome_hours.n_other+")
    .replace("n_none=n_none+", "n_none=outcome_hours.n_none+")
    .replace("n_abstain=n_abstain+", "n_abstain=outcome_hours.n_abstain+")
    .replace("n_ir=n_ir+", "n_ir=outcome_hours.n_ir+")
    .replace("n_day=n_day+", "n_day=outcome_hours.n_day+"),
    True,
)


def day_of(ts: float) -> int:
    return int(ts // DAY_S)


# The shared row, then the arrival day (the partition key).
_PRED_COLS = f"{PRED_COLS}, day"
_TEL_COLS = f"{TEL_COLS}, day"
_INSERT_GAP = (
    "INSERT INTO gaps(device, site, first_seq, last_seq, cause, detected_ts) VALUES (%s,%s,%s,%s,%s,%s)"
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
        self._rows: dict[int, list[tuple[Any, ...]]] = {}  # prediction rows of the current write
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
            # Every prediction's row, built before the transaction: it is most of this write's
            # Python work, and another worker applying the same devices waits on our locks for
            # as long as the transaction lasts.
            self._rows = {}
            for it in items:
                if isinstance(it.msg, PredictionBatch):
                    # A value that cannot become a row fails again inside, item by item (isolate).
                    with contextlib.suppress(*_RECORD_ERRORS):
                        day = day_of(it.received_ts)
                        self._rows[id(it.msg)] = [
                            (*prediction_row(it.msg, p, it.received_ts), day) for p in it.msg.predictions
                        ]
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
                        worker = progress[0] if progress else ""
                        cur.executemany(
                            translate(INSERT_DEAD_LETTER, True), dead_letter_rows(worker, letters)
                        )
                if progress is not None:
                    self.conn.execute(translate(UPSERT_PROGRESS, True), progress)
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
                rows = sorted((k, v) for k, v in res.counter_deltas(counters).items() if v)
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
        row = self.conn.execute(translate(SELECT_PROGRESS, True), (worker,)).fetchone()
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
        """New rows of every device of the write, judged under the devices' locks, in a fixed
        number of statements whatever the batch holds: one read of the devices, one of the gaps
        late rows may fill, one COPY, then one statement each for gaps, devices and outcomes.

        Two workers sharing a subscription split a device's stream between them, so about half
        of what each applies arrives after the other's later seqs, i.e. fills a gap: that path
        must cost no more than the in-order one (it used to take two statements per seq)."""
        c = self.conn
        devs = sorted(batches)
        state = {
            r[0]: (r[1], int(r[2] or 0))
            for r in c.execute(
                "SELECT device, max_seq, evicted_total FROM devices WHERE device = ANY(%s)", (devs,)
            ).fetchall()
        }
        walks: dict[str, SeqWalk] = {}
        lates: dict[str, list[set[int]]] = {}
        for device in devs:
            blist = batches[device] = sorted(batches[device], key=lambda x: x[0].predictions[0].seq)
            max_seq, evicted = state.get(device, (None, 0))
            walk = walks[device] = SeqWalk(device, blist[0][0].site, max_seq, evicted)
            lates[device] = [walk.batch(b, received) for b, received in blist]
        stored_gaps: dict[str, list[GapRow]] = {}
        late_devs = [d for d in devs if walks[d].late]
        if late_devs:
            for g in c.execute(
                "SELECT device, id, site, first_seq, last_seq, cause, detected_ts FROM gaps "
                "WHERE device = ANY(%s)",
                (late_devs,),
            ).fetchall():
                stored_gaps.setdefault(g[0], []).append(tuple(g[1:]))
        rows: list[tuple[Any, ...]] = []
        expected: dict[str, int] = {}
        gaps_delete: list[tuple[int]] = []
        gaps_update: list[tuple[int, int, int]] = []
        gaps_insert: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for device in devs:
            blist, walk = batches[device], walks[device]
            plan = plan_fill(stored_gaps.get(device, []), walk.opened, walk.late)
            gaps_delete += [(i,) for i in plan.delete]
            gaps_update += plan.update
            gaps_insert += [(device, *g[1:]) for g in plan.insert]
            res.gaps_opened += [(device, g[2], g[3]) for g in walk.opened]
            res.seqs_recovered += len(plan.recovered)
            seen: set[int] = set()
            for (b, received), late in zip(blist, lates[device], strict=True):
                built = self._rows.get(id(b)) or [
                    (*prediction_row(b, p, received), day_of(received)) for p in b.predictions
                ]
                for p, row in zip(b.predictions, built, strict=True):
                    # A late seq is new only if it fills a gap; a seq sent twice in one write once.
                    if p.seq in seen or (p.seq in late and p.seq not in plan.recovered):
                        continue
                    seen.add(p.seq)
                    rows.append(row)
            expected[device] = sum(len(b.predictions) for b, _ in blist)
            updates.append(
                (
                    walk.max_seq,
                    max(b.evicted_total for b, _ in blist),
                    blist[-1][0].predictions[-1].model_version,
                    device,
                )
            )
        stored, inserted = self._copy_predictions(rows)
        with c.cursor() as cur:
            if gaps_delete:
                cur.executemany("DELETE FROM gaps WHERE id=%s", gaps_delete)
            if gaps_update:
                cur.executemany("UPDATE gaps SET first_seq=%s, last_seq=%s WHERE id=%s", gaps_update)
            if gaps_insert:
                cur.executemany(_INSERT_GAP, gaps_insert)
            cur.executemany(
                "UPDATE devices SET max_seq=%s, evicted_total=greatest(evicted_total, %s), "
                "predictions_total=predictions_total+%s, model_version=coalesce(%s, model_version) "
                "WHERE device=%s",
                [(u[0], u[1], stored.get(u[3], 0), u[2], u[3]) for u in updates],
            )
        self._outcomes(inserted)
        total = sum(stored.values())
        res.predictions_stored += total
        res.duplicates += sum(expected.values()) - total

    def _copy_predictions(self, rows: list[tuple[Any, ...]]) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
        """Insert ``rows``; returns the count per device and the rows really inserted."""
        c = self.conn
        stored: dict[str, int] = {}
        if not rows:
            return stored, rows
        try:
            # The rows were judged new under the devices' locks: COPY them straight into the
            # table, in a savepoint (no staging table, no second pass over the rows on the
            # server). Only if one exists after all (a device row deleted and recreated, say)
            # does the staging path below sort them out with ON CONFLICT DO NOTHING.
            with (
                c.transaction(),
                c.cursor() as cur,
                cur.copy(f"COPY predictions ({_PRED_COLS}) FROM STDIN") as cp,
            ):
                for r in rows:
                    cp.write_row(r)
            for r in rows:
                stored[r[0]] = stored.get(r[0], 0) + 1
            return stored, rows
        except psycopg.errors.UniqueViolation:
            pass
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
            cur.execute("TRUNCATE pred_stage")
        for d, _ in inserted:
            stored[d] = stored.get(d, 0) + 1
        return stored, [r for r in rows if (r[0], r[1]) in inserted]

    def _outcomes(self, inserted: list[tuple[Any, ...]]) -> None:
        """The hourly outcome counts (``outcome_hours``) of the rows this write really inserted."""
        tallies: dict[str, tuple[str, Tally]] = {}
        for r in inserted:
            t = tallies.get(r[0])
            if t is None:
                t = tallies[r[0]] = (r[2], Tally())
            t[1].add_row(r)
        upserts = [row for d, (site, t) in sorted(tallies.items()) for row in t.rows(d, site)]
        if upserts:
            with self.conn.cursor() as cur:
                cur.executemany(_UPSERT_OUTCOMES_PG, upserts)

    # telemetry, status, model state ------------------------------------------------------------
    def _telemetry(self, items: list[tuple[Telemetry, float]]) -> int:
        rows = [(*telemetry_row(t, received), day_of(received)) for t, received in items]
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
        row = self.conn.execute(translate(SELECT_STATUS, True), (s.device,)).fetchone()
        return row is not None and (row[0], row[1]) == (s.state, s.reason)

    def _status_details(self, s: DeviceStatus) -> None:
        self.conn.execute(translate(UPDATE_STATUS_DETAILS, True), (s.software, s.model_version, s.device))

    def _status(self, s: DeviceStatus, received: float) -> None:
        event, update = status_rows(s, received)
        self.conn.execute(translate(INSERT_STATUS_EVENT, True), event)
        self.conn.execute(translate(UPDATE_STATUS, True), update)

    def _model_state(self, m: ModelState, received: float) -> None:
        event, update = model_state_rows(m, received)
        self.conn.execute(translate(INSERT_MODEL_STATE, True), event)
        self.conn.execute(translate(UPDATE_MODEL_STATE, True), update)
