"""The fleet store's read side on PostgreSQL: ``FleetStore`` with the few methods whose SQL or
mechanics differ (upserts written with sqlite-utils, retention by partition).

``FleetStore(cfg.fleet_store)`` returns one of these when ``fleet.database_url`` is set.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

from cloud.fleet.backends.pg_writer import DAY_S
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import BadRequest, FleetError
from cloud.fleet.outcomes import FEEDBACK_INPUT, LEGACY_NONE, NONE, canonical_label
from cloud.fleet.schema import connect
from cloud.fleet.store import LABELS, FleetStore, prediction_id

PRUNE_LOCK_KEY = 0x70727565  # the advisory lock one pruning worker holds
_PART = re.compile(r"^(predictions|telemetry)_d(\d{8})$")


class PgFleetStore(FleetStore):
    dialect = "postgresql"

    def __init__(self, path: str | Path | PgTarget, synchronous: str = "FULL") -> None:
        assert isinstance(path, PgTarget)
        self.target = path
        self.path = Path(path.display())  # for messages only; nothing opens it as a file
        self.db = connect(path)  # type: ignore[assignment]  # same .conn/.close() interface
        import threading

        self._lock = threading.RLock()

    def add_feedback(
        self, pred: dict[str, Any], label: str, actor: str, comment: str | None = None
    ) -> dict[str, Any]:
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
        cols = list(row)
        sets = ", ".join(f"{c}=excluded.{c}" for c in cols if c not in ("device", "seq"))
        self.execute(
            f"INSERT INTO feedback({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT(device, seq) DO UPDATE SET {sets}",
            [row[c] for c in cols],
        )
        row["prediction_id"] = prediction_id(pred["device"], pred["seq"])
        return row

    def add_drift(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock, self.db.conn:
            for r in rows:
                enc = {k: (json.dumps(v) if k in ("reasons", "details") else v) for k, v in r.items()}
                cols = list(enc)
                self.db.conn.execute(
                    f"INSERT INTO drift({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [enc[c] for c in cols],
                )

    def prune(self, before_ts: float) -> dict[str, int]:
        """Drop whole day partitions received before ``before_ts``'s day; labelled predictions are
        moved to the ``_kept`` partition first. The small tables are deleted by arrival time."""
        cutoff = int(before_ts // DAY_S)
        out = {"predictions": 0, "telemetry": 0}
        raw = self.db.conn.raw  # type: ignore[attr-defined]  # a PgConnection here
        try:
            # Every worker's materializer prunes at start-up and hourly: one at a time is enough,
            # the others find nothing left to do.
            row = raw.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK_KEY,)).fetchone()
            if not (row and row[0]):
                return out
        except Exception as e:
            raise FleetError(f"retention prune failed on {self.target.display()}: {e}") from e
        try:
            return self._prune(raw, cutoff, before_ts, out)
        finally:
            with contextlib.suppress(Exception):  # a broken connection released it anyway
                raw.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))

    def _prune(self, raw: Any, cutoff: int, before_ts: float, out: dict[str, int]) -> dict[str, int]:
        try:
            parts = raw.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('predictions', 'telemetry')"
            ).fetchall()
            for (name,) in sorted(parts):
                m = _PART.match(name)
                if not m:
                    continue  # predictions_kept
                day = int(calendar.timegm(time.strptime(m.group(2), "%Y%m%d"))) // DAY_S
                if day >= cutoff:
                    continue
                table = m.group(1)
                with raw.transaction():
                    if table == "predictions":
                        raw.execute(
                            "UPDATE predictions SET day = 0 WHERE day = %s AND EXISTS "
                            "(SELECT 1 FROM feedback f "
                            "WHERE f.device = predictions.device AND f.seq = predictions.seq)",
                            (day,),
                        )
                    got = raw.execute(f'SELECT count(*) FROM "{name}"').fetchone()
                    out[table] += int(got[0]) if got else 0
                    raw.execute(f'DROP TABLE "{name}"')
            with raw.transaction():
                for table, col in (
                    ("status_events", "received_ts"),
                    ("model_states", "received_ts"),
                    ("drift", "ts"),
                    ("gaps", "detected_ts"),
                    ("dead_letters", "received_ts"),
                ):
                    out[table] = raw.execute(f"DELETE FROM {table} WHERE {col} < %s", (before_ts,)).rowcount
                out["outcome_hours"] = raw.execute(
                    "DELETE FROM outcome_hours WHERE hour < %s", (int(before_ts // 3600),)
                ).rowcount
        except Exception as e:  # psycopg.Error, wrapped at the boundary
            raise FleetError(f"retention prune failed on {self.target.display()}: {e}") from e
        return out
