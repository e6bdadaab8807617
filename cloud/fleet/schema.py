"""Fleet database tables. One SQLite file (``cfg.paths.fleet_db``, WAL) for everything the fleet sends,
what the analysis concludes about it, feedback labels and alerts.

Keys carry the guarantees: ``predictions`` is keyed by (device, seq), so a redelivered batch is
stored once; ``telemetry`` by (device, ts); status and model-state history by (device, ts, state).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import sqlite_utils

from cloud.fleet.backends.migrations import migrate_sqlite, sqlite_migrations
from cloud.fleet.backends.target import PgTarget
from cloud.fleet.errors import FleetError

if TYPE_CHECKING:
    from cloud.fleet.backends.pg import PgDatabase

BUSY_TIMEOUT_S = 10.0

DDL = """
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    grp TEXT,
    status TEXT,
    status_ts REAL,
    status_reason TEXT,
    status_rx REAL,
    software TEXT,
    model_version TEXT,
    first_seen REAL,
    last_seen REAL,
    last_msg_ts REAL,
    max_seq INTEGER,
    evicted_total INTEGER NOT NULL DEFAULT 0,
    predictions_total INTEGER NOT NULL DEFAULT 0,
    update_state TEXT,
    update_version TEXT,
    active_version TEXT,
    previous_version TEXT,
    update_reason TEXT,
    update_progress REAL,
    update_ts REAL,
    health TEXT,
    health_reasons TEXT,
    health_ts REAL
);
CREATE TABLE IF NOT EXISTS predictions (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    camera TEXT NOT NULL,
    ts REAL NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    probs TEXT,
    model_version TEXT NOT NULL,
    abstain INTEGER NOT NULL,
    flags TEXT,
    latency_ms REAL,
    frame_ts REAL,
    snapshot TEXT,
    received_ts REAL NOT NULL,
    regions TEXT,
    ir INTEGER,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
-- Only the indexes reads need: each index on predictions costs ingest about 20 % of its write
-- time. Analysis reads a time window (ts); the dashboard reads per device (the primary key).
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions(ts);
CREATE INDEX IF NOT EXISTS predictions_snapshot ON predictions(snapshot) WHERE snapshot IS NOT NULL;
CREATE TABLE IF NOT EXISTS telemetry (
    device TEXT NOT NULL,
    ts REAL NOT NULL,
    site TEXT NOT NULL,
    seq INTEGER,
    cpu_percent REAL,
    memory_percent REAL,
    disk_percent REAL,
    temp_max REAL,
    latency_p50 REAL,
    latency_p95 REAL,
    latency_p99 REAL,
    inference_fps REAL,
    inference_errors INTEGER,
    abstain_rate REAL,
    outbox_backlog INTEGER,
    outbox_evicted INTEGER,
    model_version TEXT,
    body TEXT NOT NULL,
    received_ts REAL NOT NULL,
    PRIMARY KEY (device, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS telemetry_ts ON telemetry(ts);
CREATE TABLE IF NOT EXISTS status_events (
    device TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    received_ts REAL NOT NULL,
    PRIMARY KEY (device, ts, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS model_states (
    device TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    version TEXT,
    active_version TEXT,
    reason TEXT,
    received_ts REAL NOT NULL,
    PRIMARY KEY (device, ts, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    cause TEXT NOT NULL,
    detected_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS gaps_device ON gaps(device, first_seq);
CREATE TABLE IF NOT EXISTS feedback (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    snapshot TEXT,
    label TEXT NOT NULL,
    predicted TEXT NOT NULL,
    model_version TEXT NOT NULL,
    pred_ts REAL NOT NULL,
    actor TEXT NOT NULL,
    comment TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feedback_model ON feedback(model_version, pred_ts);
CREATE TABLE IF NOT EXISTS drift (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    model_version TEXT NOT NULL,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    n INTEGER NOT NULL,
    psi REAL,
    js REAL,
    ks REAL,
    ks_p REAL,
    wasserstein REAL,
    abstain_rate REAL,
    flag_rate REAL,
    est_accuracy REAL,
    accuracy REAL,
    n_labels INTEGER,
    recall_gap REAL,
    drifted INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_model_site ON drift(model_version, site, ts);
-- Where each ingest worker's materializer got to in its inbox (cloud/fleet/inbox.py), written in
-- the same transaction as the rows it produced, so an inbox row is applied exactly once.
CREATE TABLE IF NOT EXISTS inbox_progress (
    worker TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL,
    upto INTEGER NOT NULL
);
-- Messages refused by validation, kept (payload cut at 64 KiB) so an operator can see what a
-- device really sent; pruned with the rest by retention.
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    worker TEXT NOT NULL,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_ts REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_ts ON dead_letters(received_ts);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


# Columns added after a table first shipped: (table, column, declaration). Added in place to an
# existing fleet.db when it is opened, NULL in the rows stored before.
_ADDED_COLUMNS = (
    ("devices", "status_rx", "REAL"),
    # Issue 11: which regions of the frame held a pet (JSON list of {box, label, confidence}),
    # and whether the frame was an IR (night) frame: 1, 0, or NULL when the box did not say.
    ("predictions", "regions", "TEXT"),
    ("predictions", "ir", "INTEGER"),
)


def _migrate(conn: sqlite3.Connection) -> None:
    for table, column, decl in _ADDED_COLUMNS:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):
                    raise  # another process opening the same file just added it: fine


# Outcome counts per device and hour, added up by the ingest writer as it stores predictions
# (cloud.fleet.writer), so the pages that show "what the cameras saw" (cats, dogs, none, abstain,
# IR share) read a few rows per device instead of every prediction of the window (a box
# classifying 5 frames/s stores 18,000 an hour). Only rows really inserted are counted: a
# redelivered prediction is not counted twice. Pruned by retention like the rows it counts.
# (A trigger did the same at 2.7 times the cost of writing a prediction row; see the writer.)
OUTCOME_HOURS = "outcome_hours"
_OUTCOME_DDL = (
    "CREATE TABLE outcome_hours (device TEXT NOT NULL, hour INTEGER NOT NULL, site TEXT NOT NULL, "
    "n INTEGER NOT NULL, n_cat INTEGER NOT NULL, n_dog INTEGER NOT NULL, n_other INTEGER NOT NULL, "
    "n_none INTEGER NOT NULL, n_abstain INTEGER NOT NULL, n_ir INTEGER NOT NULL, n_day INTEGER NOT NULL, "
    "PRIMARY KEY (device, hour)) WITHOUT ROWID",
    "CREATE INDEX outcome_hours_hour ON outcome_hours(hour)",
)
# A row's outcome in SQL, as cloud.fleet.outcomes.outcome says it: abstain, then none, then pets.
_ABSTAIN_SQL = "(abstain <> 0 OR label = 'abstain')"
_NONE_SQL = f"(NOT {_ABSTAIN_SQL} AND label IN ('none', 'neither'))"
_PET_SQL = f"(NOT {_ABSTAIN_SQL} AND label NOT IN ('none', 'neither', 'abstain')"
_BACKFILL = (
    "INSERT INTO outcome_hours(device, hour, site, n, n_cat, n_dog, n_other, n_none, n_abstain, n_ir, "
    "n_day) SELECT device, CAST(ts / 3600 AS INTEGER) AS h, max(site), count(*), "
    f"sum({_PET_SQL} AND label = 'cat')), sum({_PET_SQL} AND label = 'dog')), "
    f"sum({_PET_SQL} AND label NOT IN ('cat', 'dog'))), sum({_NONE_SQL}), sum({_ABSTAIN_SQL}), "
    "sum(coalesce(ir = 1, 0)), sum(coalesce(ir = 0, 0)) FROM predictions GROUP BY device, h"
)


def _add_outcome_hours(conn: sqlite3.Connection) -> None:
    """Create the hourly outcome counts, counting the rows already stored, once: under a write
    lock, so two processes opening an older fleet.db together do not both count."""

    def exists() -> bool:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (OUTCOME_HOURS,))
        return row.fetchone() is not None

    if exists():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not exists():
            for stmt in _OUTCOME_DDL:
                conn.execute(stmt)
            conn.execute(_BACKFILL)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@overload
def connect(path: str | Path, synchronous: str = "FULL") -> sqlite_utils.Database: ...
@overload
def connect(path: PgTarget, synchronous: str = "FULL") -> PgDatabase: ...
@overload
def connect(path: str | Path | PgTarget, synchronous: str = "FULL") -> Any: ...
def connect(path: str | Path | PgTarget, synchronous: str = "FULL") -> Any:
    """Open the fleet file in WAL mode so the dashboard reads while ingest writes.

    ``synchronous=FULL`` makes a commit durable before ingest acknowledges the messages to the
    broker: an acknowledged message is on disk, an unacknowledged one is resent by the broker.
    Batching keeps the fsync per transaction cheap.

    A :class:`PgTarget` (``fleet.database_url``) opens the PostgreSQL store instead: an object
    with the same ``.conn``/``.close()`` (cloud/fleet/backends/pg.py), its schema migrated.
    """
    if isinstance(path, PgTarget):
        from cloud.fleet.backends.pg import PgDatabase

        return PgDatabase(path)
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        migrate_sqlite(conn, sqlite_migrations(DDL))
        _migrate(conn)
        _add_outcome_hours(conn)

    except (OSError, sqlite3.Error) as e:
        raise FleetError(
            f"cannot open fleet database {p}: {e}; check data_dir in the cloud config and its permissions"
        ) from e
    return db
