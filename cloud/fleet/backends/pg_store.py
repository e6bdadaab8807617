"""The fleet store's read side on PostgreSQL: ``FleetStore`` with what differs here, the
connection and retention by partition. Every query, and the conversion of rows to records
(cloud/fleet/records.py), is ``FleetStore``'s own, so both backends return the same records.

``FleetStore(cfg.fleet_store)`` returns one of these when ``fleet.database_url`` is set.
"""

from __future__ import annotations

import calendar
import contextlib
import re
import time
from pathlib import Path
from typing import Any

from cloud.fleet.backends.pg_writer import DAY_S
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import FleetError
from cloud.fleet.schema import connect
from cloud.fleet.store import FleetStore

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
