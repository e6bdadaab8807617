"""SQLite fleet schema (``fleet.db``), by migration number (applied by :mod:`.migrations` through
shared/sqlite.py; never edit a shipped one, add the next). pg_ddl.py is the PostgreSQL side.

Version 1 is the schema as it shipped when numbered migrations came (all ``CREATE ... IF NOT
EXISTS``, so a fleet.db from before adopts it unchanged). Older releases added columns and tables
on the fly at every open: migration 3 adds them only where missing, so a file from any release,
with some of them present, is brought to the same schema without losing a row.
"""

from __future__ import annotations

import sqlite3

from shared.sqlite import add_column, table_exists

# The DDL as commit e131312 shipped it with user_version 1 (a later merge edited it in place to
# add predictions.regions/ir; those are migration 3 now, as on PostgreSQL).
V1 = """
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

# The heartbeat rows of the ingest workers (cloud/fleet/workers.py).
V2_WORKERS = """
CREATE TABLE IF NOT EXISTS ingest_workers (
    worker TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_ts REAL NOT NULL,
    heartbeat_ts REAL NOT NULL,
    state TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,
    backlog INTEGER,
    oldest_age_s REAL,
    stored_predictions INTEGER NOT NULL DEFAULT 0,
    write_errors INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""

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


def v3_columns_and_outcome_hours(conn: sqlite3.Connection) -> None:
    """Issue 11's columns (the regions that held a pet, whether the frame was IR) and the hourly
    outcome counts; ``devices.status_rx`` too, which releases before e131312 added on the fly.
    Each only where missing: those releases added them at every open, so any may be there."""
    add_column(conn, "devices", "status_rx", "REAL")
    add_column(conn, "predictions", "regions", "TEXT")
    add_column(conn, "predictions", "ir", "INTEGER")
    if not table_exists(conn, OUTCOME_HOURS):
        for stmt in _OUTCOME_DDL:
            conn.execute(stmt)


# Count the predictions stored before outcome_hours existed, for the (device, hour)s without a row
# yet: an hour the writer (or an older release's on-the-fly build) already counted is left alone,
# so nothing is counted twice. Same rule as PostgreSQL's V4_OUTCOMES_BACKFILL.
V4_OUTCOMES_BACKFILL = _BACKFILL.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)


# Alerts, their history and the unpublished marks (cloud/governance/alerts.py). Created by the
# alert store on the fly before; on PostgreSQL they came with migration 1.
V5_ALERTS = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    rule TEXT NOT NULL,
    site TEXT NOT NULL,
    device TEXT,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    opened_ts REAL NOT NULL,
    updated_ts REAL NOT NULL,
    last_seen_ts REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    acked_by TEXT, acked_ts REAL, ack_comment TEXT,
    resolved_by TEXT, resolved_ts REAL, resolve_comment TEXT,
    actions TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS alerts_key ON alerts(key, state);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts(state, opened_ts);
CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events(alert_id, id);
-- Alerts whose latest state change could not be published on MQTT (broker down): published by
-- the next governor run, so subscribers learn every alert's current state eventually.
CREATE TABLE IF NOT EXISTS alerts_unpublished (
    alert_id TEXT PRIMARY KEY,
    since_ts REAL NOT NULL
);
"""


# Each materializer's counters, added in the transaction of every batch
# (cloud/fleet/materializer_stats.py). Same table as PostgreSQL's V5_MATERIALIZER_STATS.
V6_MATERIALIZER_STATS = """
CREATE TABLE IF NOT EXISTS materializer_stats (
    worker TEXT PRIMARY KEY,
    materialized INTEGER NOT NULL DEFAULT 0,
    stored_predictions INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    dead_letters INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    batches INTEGER NOT NULL DEFAULT 0,
    last_batch_ts REAL,
    last_batch_rows INTEGER NOT NULL DEFAULT 0,
    lag_s REAL
);
"""
