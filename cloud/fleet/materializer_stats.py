"""Each materializer's counters, in the fleet store (table ``materializer_stats``).

Updated by the batch writer in the same transaction as the rows and the inbox progress mark, so
the figures are exactly what the fleet tables hold, on every host, across restarts and crashes
of any process: nothing to lose in shared memory, nothing to re-add after a restart. ``parkwatch
cloud inbox``, ``cloud health``, the dashboard and the worker heartbeat view read them from here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

# Both backends take this statement (``?`` becomes ``%s`` on PostgreSQL).
_ADD = (
    "INSERT INTO materializer_stats(worker, materialized, stored_predictions, duplicates, dead_letters, "
    "rejected, batches, last_batch_ts, last_batch_rows, lag_s) VALUES (?,?,?,?,?,?,1,?,?,?) "
    "ON CONFLICT(worker) DO UPDATE SET "
    "materialized=materializer_stats.materialized+excluded.materialized, "
    "stored_predictions=materializer_stats.stored_predictions+excluded.stored_predictions, "
    "duplicates=materializer_stats.duplicates+excluded.duplicates, "
    "dead_letters=materializer_stats.dead_letters+excluded.dead_letters, "
    "rejected=materializer_stats.rejected+excluded.rejected, "
    "batches=materializer_stats.batches+1, last_batch_ts=excluded.last_batch_ts, "
    "last_batch_rows=excluded.last_batch_rows, lag_s=excluded.lag_s"
)


@dataclass(frozen=True)
class BatchFacts:
    """What the materializer knows of one batch that the writer does not: how many inbox rows it
    consumed, how many of them the receiver had refused, and the oldest one's arrival."""

    rows: int
    rejected: int
    oldest_received_ts: float


def add_batch(
    conn: Any,
    pg: bool,
    worker: str,
    facts: BatchFacts,
    stored: int,
    duplicates: int,
    dead_letters: int,
    now: float | None = None,
) -> None:
    """Add one batch to ``worker``'s row, inside the caller's open transaction."""
    now = time.time() if now is None else now
    params = (
        worker,
        facts.rows,
        stored,
        duplicates,
        dead_letters,
        facts.rejected,
        now,
        facts.rows,
        round(max(0.0, now - facts.oldest_received_ts), 3),
    )
    conn.execute(_ADD.replace("?", "%s") if pg else _ADD, params)


@dataclass(frozen=True)
class MaterializerStats:
    worker: str
    materialized: int  # inbox rows applied (messages), refused ones included
    stored_predictions: int
    duplicates: int  # predictions delivered again and stored once
    dead_letters: int  # messages kept as dead letters (refused by validation or the database)
    rejected: int  # refused by the receiver (unknown topic, too large): counted, not kept
    batches: int
    last_batch_ts: float | None
    last_batch_rows: int
    lag_s: float | None  # how long the oldest message of the last batch waited after its PUBACK
    last_batch_age_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_to_stats(r: dict[str, Any], now: float) -> MaterializerStats:
    last = None if r["last_batch_ts"] is None else float(r["last_batch_ts"])
    return MaterializerStats(
        worker=str(r["worker"]),
        materialized=int(r["materialized"]),
        stored_predictions=int(r["stored_predictions"]),
        duplicates=int(r["duplicates"]),
        dead_letters=int(r["dead_letters"]),
        rejected=int(r["rejected"]),
        batches=int(r["batches"]),
        last_batch_ts=last,
        last_batch_rows=int(r["last_batch_rows"]),
        lag_s=None if r["lag_s"] is None else float(r["lag_s"]),
        last_batch_age_s=None if last is None else round(max(0.0, now - last), 1),
    )


def stats_in(store: Any, now: float | None = None) -> dict[str, MaterializerStats]:
    """Every worker's counters from an open ``FleetStore``, by worker."""
    now = time.time() if now is None else now
    rows = store.query("SELECT * FROM materializer_stats ORDER BY worker")
    return {str(r["worker"]): row_to_stats(r, now) for r in rows}
