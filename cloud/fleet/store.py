"""Read side of the fleet database, shared by the CLI, the analysis job and the dashboard.

Every method returns plain dicts/lists (JSON-ready), so the dashboard and ``--json`` print the
same thing. Writes from ingest go through :mod:`cloud.fleet.writer`; the few writes here
(health, feedback, drift results, retention) are small and come from the analysis or a person.
"""

from __future__ import annotations

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
from cloud.fleet.schema import connect
from shared.protocol.messages import SEQ_MAX

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


_SUMS = "sum(n), sum(n_cat), sum(n_dog), sum(n_other), sum(n_none), sum(n_abstain), sum(n_ir), sum(n_day)"


def _hour(ts: float | None) -> int:
    return int((ts or 0.0) // 3600)


def _summary(row: tuple[Any, ...] | None, since: float | None) -> dict[str, Any]:
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
    out["from"] = _hour(since) * 3600.0
    return out


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

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        with self._lock, self.db.conn:
            return self.db.conn.execute(sql, params).rowcount

    # devices -------------------------------------------------------------------------------
    def devices(self, site: str | None = None) -> list[dict[str, Any]]:
        """Every device with status, last seen, model version, update state and health."""
        if site:
            return self.query("SELECT * FROM devices WHERE site=? ORDER BY site, device", (site,))
        return self.query("SELECT * FROM devices ORDER BY site, device")

    def devices_brief(self) -> list[dict[str, Any]]:
        """Every device with only what the fleet page counts, filters and sorts by; the page
        reads the full rows of the devices it shows (:meth:`devices_named`)."""
        return self.query(
            "SELECT device, site, status, status_reason, last_seen, health, update_state, model_version "
            "FROM devices ORDER BY site, device"
        )

    def devices_named(self, names: list[str]) -> list[dict[str, Any]]:
        """Full rows of ``names`` (any order; unknown names are left out)."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            out += self.query(f"SELECT * FROM devices WHERE device IN ({marks})", chunk)
        return out

    def latest_figures(self) -> dict[str, dict[str, Any]]:
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
        return {r["device"]: r for r in self.query(sql)}

    def device(self, device: str) -> dict[str, Any]:
        rows = self.query("SELECT * FROM devices WHERE device=?", (device,))
        if not rows:
            raise NotFound(
                f"device {device!r} has never reported; check the name with `parkwatch cloud health`"
            )
        return rows[0]

    def set_health(self, device: str, state: str, reasons: list[str], ts: float) -> None:
        self.execute(
            "UPDATE devices SET health=?, health_reasons=?, health_ts=? WHERE device=?",
            (state, json.dumps(reasons), ts, device),
        )

    def status_events(self, device: str, limit: int = 100) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM status_events WHERE device=? ORDER BY ts DESC LIMIT ?", (device, limit)
        )

    def model_states(self, device: str, limit: int = 100) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM model_states WHERE device=? ORDER BY ts DESC LIMIT ?", (device, limit)
        )

    # telemetry -----------------------------------------------------------------------------
    def telemetry(
        self,
        device: str,
        since: float | None = None,
        until: float | None = None,
        limit: int = 10_000,
        full: bool = False,
    ) -> list[dict[str, Any]]:
        """Telemetry rows of one device in time order; ``full`` adds the whole message (``body``)."""
        cols = (
            "*"
            if full
            else (
                "device, ts, site, cpu_percent, memory_percent, disk_percent, temp_max, latency_p50, "
                "latency_p95, latency_p99, inference_fps, inference_errors, abstain_rate, outbox_backlog, "
                "outbox_evicted, model_version"
            )
        )
        rows = self.query(
            f"SELECT {cols} FROM telemetry WHERE device=? AND ts>=? AND ts<=? ORDER BY ts DESC LIMIT ?",
            (device, since if since is not None else 0.0, until if until is not None else 1e18, limit),
        )
        rows.reverse()
        return rows

    def latest_telemetry(self, device: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM telemetry WHERE device=? ORDER BY ts DESC LIMIT 1", (device,))
        return rows[0] if rows else None

    def latest_telemetry_of(self, devices: list[str]) -> dict[str, dict[str, Any]]:
        """:meth:`latest_telemetry` of several devices in one query (the fleet page's rows): on
        PostgreSQL each statement on the partitioned table costs a planning over every day
        partition, so a page of 100 devices must not be 100 statements."""
        if not devices:
            return {}
        if self.dialect == "postgresql":
            rows = self.query(
                "SELECT t.* FROM unnest(?::text[]) AS d(device) CROSS JOIN LATERAL (SELECT * FROM "
                "telemetry x WHERE x.device = d.device ORDER BY x.ts DESC LIMIT 1) AS t",
                (devices,),
            )
            return {r["device"]: r for r in rows}
        out: dict[str, dict[str, Any]] = {}
        for d in devices:  # in-process SQLite: a primary-key probe each, no round trip
            r = self.latest_telemetry(d)
            if r is not None:
                out[d] = r
        return out

    def telemetry_of(
        self, devices: list[str], since: float, limit: int = 120
    ) -> dict[str, list[dict[str, Any]]]:
        """The newest ``limit`` samples since ``since`` of each of ``devices``, oldest first, in
        one query (the fleet page's sparklines)."""
        out: dict[str, list[dict[str, Any]]] = {d: [] for d in devices}
        for i in range(0, len(devices), 500):
            chunk = devices[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            for r in self.query(
                "SELECT device, ts, cpu_percent, temp_max FROM (SELECT device, ts, cpu_percent, temp_max, "
                "row_number() OVER (PARTITION BY device ORDER BY ts DESC) AS k FROM telemetry "
                f"WHERE device IN ({marks}) AND ts >= ?) AS w WHERE k <= ? ORDER BY device, ts",
                [*chunk, since, limit],
            ):
                out[r["device"]].append(r)
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
    ) -> list[dict[str, Any]]:
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
        for r in rows:
            r["id"] = prediction_id(r["device"], r["seq"])
        return rows

    def prediction(self, pid: str) -> dict[str, Any]:
        device, seq = parse_prediction_id(pid)
        rows = self.query("SELECT * FROM predictions WHERE device=? AND seq=?", (device, seq))
        if not rows:
            raise NotFound(
                f"prediction {pid} is not in the fleet store (expired by retention, or never received)"
            )
        rows[0]["id"] = pid
        return rows[0]

    def prediction_by_snapshot(self, snapshot: str) -> dict[str, Any]:
        rows = self.query("SELECT * FROM predictions WHERE snapshot=? LIMIT 1", (snapshot,))
        if not rows:
            raise NotFound(f"no prediction carries snapshot {snapshot!r}")
        rows[0]["id"] = prediction_id(rows[0]["device"], rows[0]["seq"])
        return rows[0]

    def prediction_count(self, device: str | None = None) -> int:
        if device:
            return int(self.query("SELECT count(*) AS n FROM predictions WHERE device=?", (device,))[0]["n"])
        return int(self.query("SELECT count(*) AS n FROM predictions")[0]["n"])

    def outcomes(
        self,
        device: str | None = None,
        site: str | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
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

    def outcomes_by_device(self, devices: list[str], since: float) -> dict[str, dict[str, Any]]:
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

    def gaps(self, device: str | None = None) -> list[dict[str, Any]]:
        """Seq ranges still missing, with the cause ingest inferred; a row that turns up later
        removes them."""
        sql = "SELECT *, last_seq-first_seq+1 AS missing FROM gaps"
        if device:
            return self.query(sql + " WHERE device=? ORDER BY first_seq", (device,))
        return self.query(sql + " ORDER BY device, first_seq")

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self.query("SELECT name, value FROM counters")}

    # feedback ------------------------------------------------------------------------------
    def add_feedback(
        self, pred: dict[str, Any], label: str, actor: str, comment: str | None = None
    ) -> dict[str, Any]:
        """Ground truth for one prediction; a later label for the same prediction replaces it.

        ``none`` says the frame holds no cat or dog (``neither``, its older name, is stored as
        ``none``), so it scores against the model's own ``none`` outcome."""
        if label not in FEEDBACK_INPUT:
            raise BadRequest(
                f"label {label!r} is not one of {', '.join(LABELS)} "
                f"(none: no cat or dog in the frame; {LEGACY_NONE!r} is accepted for {NONE!r})"
            )
        label = canonical_label(label)
        if not actor:
            raise BadRequest("a label needs an actor (who says so)")
        row = {
            "device": pred["device"],
            "seq": pred["seq"],
            "site": pred["site"],
            "snapshot": pred.get("snapshot"),
            "label": label,
            "predicted": pred["label"],
            "model_version": pred["model_version"],
            "pred_ts": pred["ts"],
            "actor": actor,
            "comment": comment,
            "ts": time.time(),
        }
        with self._lock:
            self.db["feedback"].upsert(row, pk=("device", "seq"))  # type: ignore[union-attr]
        row["prediction_id"] = prediction_id(pred["device"], pred["seq"])
        return row

    def feedback(
        self,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        site: str | None = None,
    ) -> list[dict[str, Any]]:
        where: list[str] = ["pred_ts>=?", "pred_ts<=?"]
        params: list[Any] = [since or 0.0, until if until is not None else 1e18]
        for col, val in (("model_version", model_version), ("site", site)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        rows = self.query(f"SELECT * FROM feedback WHERE {' AND '.join(where)} ORDER BY pred_ts", params)
        for r in rows:
            r["label"] = canonical_label(r["label"])  # rows stored as "neither" before issue 11
        return rows

    # drift results -------------------------------------------------------------------------
    def add_drift(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        enc = [{k: (json.dumps(v) if k in ("reasons", "details") else v) for k, v in r.items()} for r in rows]
        with self._lock:
            self.db["drift"].insert_all(enc)  # type: ignore[union-attr]

    def drift_results(
        self,
        model_version: str | None = None,
        site: str | None = None,
        device: str | None = None,
        run_id: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
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
        return self.query(
            f"SELECT * FROM drift WHERE {' AND '.join(where)} ORDER BY ts DESC, id LIMIT ?", [*params, limit]
        )

    def latest_drift(self, site: str | None = None) -> list[dict[str, Any]]:
        """All cohorts of the most recent analysis run (what the dashboard's drift page shows)."""
        row = self.query("SELECT run_id FROM drift ORDER BY ts DESC, id DESC LIMIT 1")
        if not row:
            return []
        return self.drift_results(site=site, run_id=row[0]["run_id"], limit=100_000)

    def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        """Messages refused on the way in, newest first; the payload as text (cut to 2,000
        characters; bytes that are not UTF-8, the usual reason for a refusal, shown as U+FFFD)."""
        rows = self.query(
            "SELECT id, worker, topic, kind, reason, received_ts, length(payload) AS bytes, "
            "substr(payload, 1, 8000) AS payload FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        for r in rows:
            raw = r["payload"]
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
            r["payload"] = text[:2000]
        return rows

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
