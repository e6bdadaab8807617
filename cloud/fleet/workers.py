"""Ingest workers' heartbeat rows in the shared fleet store (table ``ingest_workers``).

Each worker's inbox is a file on its own host, so ``parkwatch cloud inbox`` on one host cannot
read the others'. Every materializer therefore writes a small row about itself (host, backlog,
oldest waiting message, rows stored, errors) to the fleet store every few seconds; any host (and
the dashboard) lists all workers from there. A row whose heartbeat is older than
``fleet.worker_stale_s`` is shown as ``down`` (crashed, host gone, or cut off from the store).
The counters of what each worker materialized are not in the heartbeat but in the
``materializer_stats`` row its batches update (cloud/fleet/materializer_stats.py); the view here
joins them.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from cloud.fleet.backends.target import FleetTarget
from cloud.fleet.materializer_stats import stats_in

_UPSERT = (
    "INSERT INTO ingest_workers(worker, host, pid, started_ts, heartbeat_ts, state, backlog, oldest_age_s, "
    "stored_predictions, write_errors, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(worker) DO UPDATE SET host=excluded.host, pid=excluded.pid, started_ts=excluded.started_ts, "
    "heartbeat_ts=excluded.heartbeat_ts, state=excluded.state, backlog=excluded.backlog, "
    "oldest_age_s=excluded.oldest_age_s, stored_predictions=excluded.stored_predictions, "
    "write_errors=excluded.write_errors, last_error=excluded.last_error"
)


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    host: str
    pid: int
    started_ts: float
    heartbeat_ts: float
    state: str  # running | stopped | down (no heartbeat for fleet.worker_stale_s)
    backlog: int | None
    oldest_age_s: float | None
    stored_predictions: int
    write_errors: int
    last_error: str | None
    heartbeat_age_s: float
    # From materializer_stats (exact, kept across restarts); None before the worker's first batch.
    materialized: int | None = None
    dead_letters: int | None = None
    last_batch_ts: float | None = None
    last_batch_age_s: float | None = None
    lag_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Beat:
    worker: str
    started_ts: float
    state: str = "running"
    backlog: int | None = None
    oldest_age_s: float | None = None
    stored_predictions: int = 0
    write_errors: int = 0
    last_error: str | None = None


def write_beat(conn: Any, b: Beat) -> None:
    """Upsert ``b`` through the ingest writer's own connection (sqlite3, or psycopg in autocommit)."""
    params = (
        b.worker,
        socket.gethostname(),
        os.getpid(),
        b.started_ts,
        time.time(),
        b.state,
        b.backlog,
        b.oldest_age_s,
        b.stored_predictions,
        b.write_errors,
        b.last_error,
    )
    if isinstance(conn, sqlite3.Connection):
        with conn:
            conn.execute(_UPSERT, params)
    else:
        conn.execute(_UPSERT.replace("?", "%s"), params)


def worker_rows(target: FleetTarget, stale_s: float, now: float | None = None) -> list[WorkerRow]:
    from cloud.fleet.store import FleetStore

    with FleetStore(target) as fs:
        return workers_in(fs, stale_s, now)


def workers_in(store: Any, stale_s: float, now: float | None = None) -> list[WorkerRow]:
    """Every worker's row from an open ``FleetStore`` (the dashboard's)."""
    now = time.time() if now is None else now
    rows = store.query("SELECT * FROM ingest_workers ORDER BY worker")
    mstats = stats_in(store, now)
    out = []
    for r in rows:
        m = mstats.get(str(r["worker"]))
        age = max(0.0, now - float(r["heartbeat_ts"]))
        state = str(r["state"])
        if state == "running" and age > stale_s:
            state = "down"
        out.append(
            WorkerRow(
                worker=str(r["worker"]),
                host=str(r["host"]),
                pid=int(r["pid"]),
                started_ts=float(r["started_ts"]),
                heartbeat_ts=float(r["heartbeat_ts"]),
                state=state,
                backlog=None if r["backlog"] is None else int(r["backlog"]),
                oldest_age_s=None if r["oldest_age_s"] is None else float(r["oldest_age_s"]),
                stored_predictions=m.stored_predictions if m else int(r["stored_predictions"]),
                write_errors=int(r["write_errors"]),
                last_error=r["last_error"],
                heartbeat_age_s=round(age, 1),
                materialized=m.materialized if m else None,
                dead_letters=m.dead_letters if m else None,
                last_batch_ts=m.last_batch_ts if m else None,
                last_batch_age_s=m.last_batch_age_s if m else None,
                lag_s=m.lag_s if m else None,
            )
        )
    return out


def remote_inbox_states(
    store: Any, local: set[str], stale_s: float, now: float | None = None
) -> list[dict[str, Any]]:
    """Inbox states (the shape of :func:`cloud.fleet.inbox.inbox_states`) of workers whose inbox
    is not on this host, from their heartbeat rows, so the health check's ``ingest_backlog`` and
    its silence allowance see the whole cluster. A worker that stopped beating with rows waiting
    keeps ageing them: nobody applies them until it comes back (or is drained on its host)."""
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for w in workers_in(store, stale_s, now):
        if w.worker in local or (w.state == "stopped" and not w.backlog):
            continue
        oldest = None
        if w.backlog and w.oldest_age_s is not None:
            oldest = round(w.oldest_age_s + w.heartbeat_age_s, 1)
        out.append(
            {
                "worker": w.worker,
                "path": f"{w.host}:(inbox of {w.worker})",
                "host": w.host,
                "backlog": w.backlog,
                "oldest_age_s": oldest,
                "state": w.state,
            }
        )
    return out
