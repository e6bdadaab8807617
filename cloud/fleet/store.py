"""Read side of the fleet database, shared by the CLI, the analysis job and the dashboard.

Every method returns typed records (cloud/fleet/records.py), the same on both backends; the
dashboard and ``--json`` print them through :func:`shared.records.jsonable`, so both print the
same thing. The SQL here serves both backends (PostgreSQL's connection translates the ``?``
placeholders); cloud/fleet/backends/pg_store.py overrides only retention. Writes from ingest go
through :mod:`cloud.fleet.writer`; the few writes here
(health, feedback, drift results, retention) are small and come from the analysis or a person.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import BadRequest, FleetError, NotFound
from cloud.fleet.outcomes import (
    FEEDBACK_INPUT,
    FEEDBACK_LABELS,
    LEGACY_NONE,
    NONE,
    canonical_label,
    summarize,
)
from cloud.fleet.records import (
    DeadLetter,
    Device,
    DeviceBrief,
    DriftResult,
    Feedback,
    Gap,
    Labelled,
    LiveFigures,
    ModelState,
    Outcomes,
    Prediction,
    StatusEvent,
    TelemetryPoint,
    TelemetryRow,
    TrendPoint,
)
from cloud.fleet.schema import connect
from shared.protocol.messages import SEQ_MAX
from shared.records import R

LABELS = FEEDBACK_LABELS  # what an operator may say a frame shows ("neither" is read as "none")

_JSON_COLS = {"probs", "flags", "health_reasons", "reasons", "details", "body", "regions"}


def _rows(cur_desc: Any, values: list[Any]) -> list[dict[str, Any]]:
    """Rows as dicts, JSON columns decoded. The column names are looked at once per query, not
    per value: the fleet page reads every device (10,000 rows x 27 columns), where per-value
    checks took most of the page's time."""
    names = [d[0] for d in cur_desc]
    out = [dict(zip(names, r, strict=True)) for r in values]
    for name in _JSON_COLS.intersection(names):
        for row in out:
            v = row[name]
            if isinstance(v, str):
                row[name] = json.loads(v)
    return out


_POINT_COLS = ", ".join(f.name for f in dataclasses.fields(TelemetryPoint))
_SUMS = "sum(n), sum(n_cat), sum(n_dog), sum(n_other), sum(n_none), sum(n_abstain), sum(n_ir), sum(n_day)"


def _hour(ts: float | None) -> int:
    return int((ts or 0.0) // 3600)


def _summary(row: tuple[Any, ...] | None, since: float | None) -> Outcomes:
    n, cat, dog, other, none, abstain, ir, day = (int(v or 0) for v in (row or (0,) * 8))
    groups: list[tuple[str, Any, Any, int]] = [
        ("cat", 0, None, cat),
        ("dog", 0, None, dog),
        ("other pets", 0, None, other),
        (NONE, 0, None, none),
        ("abstain", 1, None, abstain),
    ]
    out = summarize([g for g in groups if g[3]])
    if not other:
        out["pets"].pop("other pets", None)
    # Lighting comes from its own columns (the groups above carry none).
    out.update(ir=ir, day=day, lighting_unknown=n - ir - day, ir_share=ir / (ir + day) if ir + day else None)
    return Outcomes(**out, from_=_hour(since) * 3600.0)


def _prediction(row: dict[str, Any]) -> Prediction:
    return Prediction.from_row(row, id=prediction_id(row["device"], row["seq"]))


def feedback_row(pred: Prediction, label: str, actor: str, comment: str | None = None) -> Feedback:
    """The feedback row a label makes, checked: ``none`` says the frame holds no cat or dog
    (``neither``, its older name, is stored as ``none``), so it scores against the model's own
    ``none`` outcome."""
    if label not in FEEDBACK_INPUT:
        raise BadRequest(
            f"label {label!r} is not one of {', '.join(LABELS)} "
            f"(none: no cat or dog in the frame; {LEGACY_NONE!r} is accepted for {NONE!r})"
        )
    if not actor:
        raise BadRequest("a label needs an actor (who says so)")
    return Feedback(
        device=pred.device,
        seq=pred.seq,
        site=pred.site,
        snapshot=pred.snapshot,
        label=canonical_label(label),
        predicted=pred.label,
        model_version=pred.model_version,
        pred_ts=pred.ts,
        actor=actor,
        comment=comment,
        ts=time.time(),
    )


_FEEDBACK_COLS = [f.name for f in dataclasses.fields(Feedback)]
# ON CONFLICT ... DO UPDATE is the same statement on SQLite (3.24+) and PostgreSQL.
_FEEDBACK_UPSERT = (
    f"INSERT INTO feedback({', '.join(_FEEDBACK_COLS)}) VALUES ({', '.join('?' for _ in _FEEDBACK_COLS)}) "
    "ON CONFLICT(device, seq) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in _FEEDBACK_COLS if c not in ("device", "seq"))
)


def prediction_id(device: str, seq: int) -> str:
    return f"{device}:{seq}"


def parse_prediction_id(pid: str) -> tuple[str, int]:
    """``device:seq``; the device alphabet has no ':' so the split is unambiguous."""
    device, sep, seq = pid.rpartition(":")
    # ASCII digits only (str.isdigit also takes '²'), and no larger than a seq can be.
    if not sep or not device or not (seq.isascii() and seq.isdigit()) or len(seq) > 19 or int(seq) > SEQ_MAX:
        raise BadRequest(f"prediction id {pid!r} must look like DEVICE:SEQ (e.g. cam-box-1:1042)")
    return device, int(seq)


class FleetStore:
    """One connection per instance, guarded by a lock; open one per thread that needs it.

    ``FleetStore(cfg.fleet_store)``: a path opens the SQLite file, a :class:`PgTarget` returns the
    PostgreSQL variant (cloud/fleet/backends/pg_store.py) with the same methods.
    """

    dialect = "sqlite"

    def __new__(cls, path: str | Path | PgTarget, synchronous: str = "FULL") -> FleetStore:
        if cls is FleetStore and isinstance(path, PgTarget):
            from cloud.fleet.backends.pg_store import PgFleetStore

            return super().__new__(PgFleetStore)
        return super().__new__(cls)

    def __init__(self, path: str | Path | PgTarget, synchronous: str = "FULL") -> None:
        assert not isinstance(path, PgTarget)
        self.path = Path(path)
        self.db = connect(self.path, synchronous=synchronous)
        self._lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.db.conn.execute(sql, params)
            return _rows(cur.description, cur.fetchall())

    def _records(self, cls: type[R], sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[R]:
        """Rows of ``sql`` as ``cls`` records (every field a column), JSON columns decoded."""
        with self._lock:
            cur = self.db.conn.execute(sql, params)
            rows = cur.fetchall()
            cols = [d[0] for d in cur.description]
        return cls.from_rows(cols, rows, _JSON_COLS)

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        with self._lock, self.db.conn:
            return self.db.conn.execute(sql, params).rowcount

    # devices -------------------------------------------------------------------------------
    def devices(self, site: str | None = None) -> list[Device]:
        """Every device with status, last seen, model version, update state and health."""
        if site:
            return self._records(Device, "SELECT * FROM devices WHERE site=? ORDER BY site, device", (site,))
        return self._records(Device, "SELECT * FROM devices ORDER BY site, device")

    def devices_brief(self) -> list[DeviceBrief]:
        """Every device with only what the fleet page counts, filters and sorts by; the page
        reads the full rows of the devices it shows (:meth:`devices_named`)."""
        return self._records(
            DeviceBrief,
            "SELECT device, site, status, status_reason, last_seen, health, update_state, model_version "
            "FROM devices ORDER BY site, device",
        )

    def devices_named(self, names: list[str]) -> list[Device]:
        """Full rows of ``names`` (any order; unknown names are left out)."""
        out: list[Device] = []
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            out += self._records(Device, f"SELECT * FROM devices WHERE device IN ({marks})", chunk)
        return out

    def latest_figures(self) -> dict[str, LiveFigures]:
        """CPU, temperature and outbox backlog of each device's newest telemetry sample, for all
        devices in one query (the fleet page sorted by a live figure): one index probe per device
        for its newest ts, then one per row, instead of a query per device."""
        if self.dialect == "postgresql":
            sql = (
                "SELECT d.device, t.cpu_percent, t.temp_max, t.outbox_backlog FROM devices d CROSS JOIN "
                "LATERAL (SELECT cpu_percent, temp_max, outbox_backlog FROM telemetry x "
                "WHERE x.device = d.device ORDER BY x.ts DESC LIMIT 1) AS t"
            )
        else:  # no LATERAL: CROSS JOIN keeps the devices outside (else SQLite scans all telemetry)
            sql = (
                "SELECT t.device, t.cpu_percent, t.temp_max, t.outbox_backlog FROM "
                "(SELECT device, (SELECT max(x.ts) FROM telemetry x WHERE x.device = d.device) AS ts "
                "FROM devices d) AS m CROSS JOIN telemetry t WHERE t.device = m.device AND t.ts = m.ts"
            )
        return {r.device: r for r in self._records(LiveFigures, sql)}

    def device(self, device: str) -> Device:
        rows = self.query("SELECT * FROM devices WHERE device=?", (device,))
        if not rows:
            raise NotFound(
                f"device {device!r} has never reported; check the name with `parkwatch cloud health`"
            )
        return Device.from_row(rows[0])

    def set_health(self, device: str, state: str, reasons: list[str], ts: float) -> None:
        self.execute(
            "UPDATE devices SET health=?, health_reasons=?, health_ts=? WHERE device=?",
            (state, json.dumps(reasons), ts, device),
        )

    def status_events(self, device: str, limit: int = 100) -> list[StatusEvent]:
        rows = self.query(
            "SELECT * FROM status_events WHERE device=? ORDER BY ts DESC LIMIT ?", (device, limit)
        )
        return [StatusEvent.from_row(r) for r in rows]

    def model_states(self, device: str, limit: int = 100) -> list[ModelState]:
        rows = self.query(
            "SELECT * FROM model_states WHERE device=? ORDER BY ts DESC LIMIT ?", (device, limit)
        )
        return [ModelState.from_row(r) for r in rows]

    # telemetry -----------------------------------------------------------------------------
    def _telemetry(
        self, cols: str, device: str, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = self.query(
            f"SELECT {cols} FROM telemetry WHERE device=? AND ts>=? AND ts<=? ORDER BY ts DESC LIMIT ?",
            (device, since if since is not None else 0.0, until if until is not None else 1e18, limit),
        )
        rows.reverse()
        return rows

    def telemetry(
        self,
        device: str,
        since: float | None = None,
        until: float | None = None,
        limit: int = 10_000,
    ) -> list[TelemetryPoint]:
        """The charted figures of one device's telemetry, in time order."""
        rows = self._telemetry(_POINT_COLS, device, since, until, limit)
        return [TelemetryPoint.from_row(r) for r in rows]

    def telemetry_rows(
        self,
        device: str,
        since: float | None = None,
        until: float | None = None,
        limit: int = 10_000,
    ) -> list[TelemetryRow]:
        """Whole telemetry rows of one device in time order, with the message (``body``)."""
        return [TelemetryRow.from_row(r) for r in self._telemetry("*", device, since, until, limit)]

    def latest_telemetry(self, device: str) -> TelemetryRow | None:
        rows = self.query("SELECT * FROM telemetry WHERE device=? ORDER BY ts DESC LIMIT 1", (device,))
        return TelemetryRow.from_row(rows[0]) if rows else None

    def latest_telemetry_of(self, devices: list[str]) -> dict[str, TelemetryRow]:
        """:meth:`latest_telemetry` of several devices in one query (the fleet page's rows): on
        PostgreSQL each statement on the partitioned table costs a planning over every day
        partition, so a page of 100 devices must not be 100 statements."""
        if not devices:
            return {}
        if self.dialect == "postgresql":
            rows = self._records(
                TelemetryRow,
                "SELECT t.* FROM unnest(?::text[]) AS d(device) CROSS JOIN LATERAL (SELECT * FROM "
                "telemetry x WHERE x.device = d.device ORDER BY x.ts DESC LIMIT 1) AS t",
                (devices,),
            )
            return {r.device: r for r in rows}
        out: dict[str, TelemetryRow] = {}
        for d in devices:  # in-process SQLite: a primary-key probe each, no round trip
            r = self.latest_telemetry(d)
            if r is not None:
                out[d] = r
        return out

    def telemetry_of(self, devices: list[str], since: float, limit: int = 120) -> dict[str, list[TrendPoint]]:
        """The newest ``limit`` samples since ``since`` of each of ``devices``, oldest first, in
        one query (the fleet page's sparklines)."""
        out: dict[str, list[TrendPoint]] = {d: [] for d in devices}
        for i in range(0, len(devices), 500):
            chunk = devices[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            for r in self._records(
                TrendPoint,
                "SELECT device, ts, cpu_percent, temp_max FROM (SELECT device, ts, cpu_percent, temp_max, "
                "row_number() OVER (PARTITION BY device ORDER BY ts DESC) AS k FROM telemetry "
                f"WHERE device IN ({marks}) AND ts >= ?) AS w WHERE k <= ? ORDER BY device, ts",
                [*chunk, since, limit],
            ):
                out[r.device].append(r)
        return out

    # predictions ---------------------------------------------------------------------------
    def predictions(
        self,
        device: str | None = None,
        site: str | None = None,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[Prediction]:
        """Newest first. Each row carries ``id`` (``device:seq``), the id labels and lineage use."""
        where: list[str] = ["ts>=?", "ts<=?"]
        params: list[Any] = [since or 0.0, until if until is not None else 1e18]
        for col, val in (("device", device), ("site", site), ("model_version", model_version)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        rows = self.query(
            f"SELECT * FROM predictions WHERE {' AND '.join(where)} ORDER BY ts DESC LIMIT ?",
            [*params, limit],
        )
        return [_prediction(r) for r in rows]

    def prediction(self, pid: str) -> Prediction:
        device, seq = parse_prediction_id(pid)
        rows = self.query("SELECT * FROM predictions WHERE device=? AND seq=?", (device, seq))
        if not rows:
            raise NotFound(
                f"prediction {pid} is not in the fleet store (expired by retention, or never received)"
            )
        return _prediction(rows[0])

    def prediction_by_snapshot(self, snapshot: str) -> Prediction:
        rows = self.query("SELECT * FROM predictions WHERE snapshot=? LIMIT 1", (snapshot,))
        if not rows:
            raise NotFound(f"no prediction carries snapshot {snapshot!r}")
        return _prediction(rows[0])

    def prediction_count(self, device: str | None = None) -> int:
        if device:
            return int(self.query("SELECT count(*) AS n FROM predictions WHERE device=?", (device,))[0]["n"])
        return int(self.query("SELECT count(*) AS n FROM predictions")[0]["n"])

    def outcomes(
        self,
        device: str | None = None,
        site: str | None = None,
        since: float | None = None,
    ) -> Outcomes:
        """Cats, dogs, ``none`` and abstentions apart, and the IR share, from ``since`` on
        (:func:`cloud.fleet.outcomes.summarize`): ``pets`` never counts a ``none`` frame.

        Read from the hourly counts ingest keeps (``outcome_hours``), so the window starts at the
        top of the hour holding ``since``; ``from`` in the answer says when it really starts."""
        where: list[str] = ["hour>=?"]
        params: list[Any] = [_hour(since)]
        for col, val in (("device", device), ("site", site)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        with self._lock:
            row = self.db.conn.execute(
                f"SELECT {_SUMS} FROM outcome_hours WHERE {' AND '.join(where)}", params
            ).fetchone()
        return _summary(row, since)

    def outcomes_by_device(self, devices: list[str], since: float) -> dict[str, Outcomes]:
        """:meth:`outcomes` of several devices in one query (the fleet page)."""
        if not devices:
            return {}
        marks = ",".join("?" for _ in devices)
        with self._lock:
            rows = self.db.conn.execute(
                f"SELECT device, {_SUMS} FROM outcome_hours WHERE hour>=? AND device IN ({marks}) "
                "GROUP BY device",
                [_hour(since), *devices],
            ).fetchall()
        found = {r[0]: r[1:] for r in rows}
        return {d: _summary(found.get(d), since) for d in devices}

    def gaps(self, device: str | None = None) -> list[Gap]:
        """Seq ranges still missing, with the cause ingest inferred; a row that turns up later
        removes them."""
        sql = "SELECT *, last_seq-first_seq+1 AS missing FROM gaps"
        if device:
            rows = self.query(sql + " WHERE device=? ORDER BY first_seq", (device,))
        else:
            rows = self.query(sql + " ORDER BY device, first_seq")
        return [Gap.from_row(r) for r in rows]

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self.query("SELECT name, value FROM counters")}

    # feedback ------------------------------------------------------------------------------
    def add_feedback(self, pred: Prediction, label: str, actor: str, comment: str | None = None) -> Labelled:
        """Ground truth for one prediction; a later label for the same prediction replaces it
        (:func:`feedback_row` checks it)."""
        row = feedback_row(pred, label, actor, comment)
        self.execute(_FEEDBACK_UPSERT, [getattr(row, c) for c in _FEEDBACK_COLS])
        return Labelled(**{c: getattr(row, c) for c in _FEEDBACK_COLS}, prediction_id=pred.id)

    def feedback(
        self,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        site: str | None = None,
    ) -> list[Feedback]:
        where: list[str] = ["pred_ts>=?", "pred_ts<=?"]
        params: list[Any] = [since or 0.0, until if until is not None else 1e18]
        for col, val in (("model_version", model_version), ("site", site)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        rows = self.query(f"SELECT * FROM feedback WHERE {' AND '.join(where)} ORDER BY pred_ts", params)
        # rows stored as "neither" before issue 11
        return [Feedback.from_row(r, label=canonical_label(r["label"])) for r in rows]

    # drift results -------------------------------------------------------------------------
    def add_drift(self, rows: list[dict[str, Any]]) -> None:
        """Store one analysis run's figures (:func:`cloud.analysis.drift.analyze`'s rows), in one
        transaction; the same INSERT on both backends."""
        with self._lock, self.db.conn:
            for r in rows:
                enc = {k: (json.dumps(v) if k in ("reasons", "details") else v) for k, v in r.items()}
                cols = list(enc)
                self.db.conn.execute(
                    f"INSERT INTO drift({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [enc[c] for c in cols],
                )

    def drift_results(
        self,
        model_version: str | None = None,
        site: str | None = None,
        device: str | None = None,
        run_id: str | None = None,
        limit: int = 500,
    ) -> list[DriftResult]:
        """Drift figures per model/site (``device`` = '' for the site as a whole) per analysis run."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        for col, val in (
            ("model_version", model_version),
            ("site", site),
            ("device", device),
            ("run_id", run_id),
        ):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        rows = self.query(
            f"SELECT * FROM drift WHERE {' AND '.join(where)} ORDER BY ts DESC, id LIMIT ?", [*params, limit]
        )
        return [DriftResult.from_row(r) for r in rows]

    def latest_drift(self, site: str | None = None) -> list[DriftResult]:
        """All cohorts of the most recent analysis run (what the dashboard's drift page shows)."""
        row = self.query("SELECT run_id FROM drift ORDER BY ts DESC, id DESC LIMIT 1")
        if not row:
            return []
        return self.drift_results(site=site, run_id=row[0]["run_id"], limit=100_000)

    def dead_letters(self, limit: int = 20) -> list[DeadLetter]:
        """Messages refused on the way in, newest first; the payload as text (cut to 2,000
        characters; bytes that are not UTF-8, the usual reason for a refusal, shown as U+FFFD)."""
        rows = self.query(
            "SELECT id, worker, topic, kind, reason, received_ts, length(payload) AS bytes, "
            "substr(payload, 1, 8000) AS payload FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        out = []
        for r in rows:
            raw = r["payload"]
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
            out.append(DeadLetter.from_row(r, payload=text[:2000]))
        return out

    # retention -----------------------------------------------------------------------------
    def prune(self, before_ts: float) -> dict[str, int]:
        """Delete rows older than ``before_ts``; labelled predictions are kept for accuracy history."""
        out = {}
        try:
            with self._lock, self.db.conn:
                c = self.db.conn
                out["predictions"] = c.execute(
                    "DELETE FROM predictions WHERE ts<? AND NOT EXISTS (SELECT 1 FROM feedback f "
                    "WHERE f.device=predictions.device AND f.seq=predictions.seq)",
                    (before_ts,),
                ).rowcount
                out["telemetry"] = c.execute("DELETE FROM telemetry WHERE ts<?", (before_ts,)).rowcount
                out["status_events"] = c.execute(
                    "DELETE FROM status_events WHERE ts<?", (before_ts,)
                ).rowcount
                out["model_states"] = c.execute("DELETE FROM model_states WHERE ts<?", (before_ts,)).rowcount
                out["drift"] = c.execute("DELETE FROM drift WHERE ts<?", (before_ts,)).rowcount
                # Whole hours only: the hour still partly inside the retention window stays.
                out["outcome_hours"] = c.execute(
                    "DELETE FROM outcome_hours WHERE hour<?", (int(before_ts // 3600),)
                ).rowcount
                out["gaps"] = c.execute("DELETE FROM gaps WHERE detected_ts<?", (before_ts,)).rowcount
                out["dead_letters"] = c.execute(
                    "DELETE FROM dead_letters WHERE received_ts<?", (before_ts,)
                ).rowcount
        except Exception as e:  # sqlite3.Error, wrapped at the boundary
            raise FleetError(f"retention prune failed on {self.path}: {e}") from e
        return out
