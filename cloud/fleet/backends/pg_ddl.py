"""PostgreSQL fleet schema, by migration number (applied by :mod:`.migrations`; never edit a
shipped one, add the next).

The same tables and columns as the SQLite ``fleet.db`` (cloud/fleet/schema.py and the alert
store), so the read side's SQL serves both. What differs, and why:

* ``predictions`` and ``telemetry`` are partitioned by ``day`` = floor(received_ts / 86400): the
  day the cloud *received* the row, so retention drops whole partitions by arrival time and a
  box with a wrong clock cannot keep rows alive or have them dropped early. Day 0 is the
  ``_kept`` partition: labelled predictions moved there before their day is dropped (feedback
  keeps the accuracy history, and a label must still find its prediction).
* Their primary key has to include the partition key, so (device, seq, day) cannot by itself
  stop a redelivery that arrives on a later day. The writer therefore decides what is new from
  the device's ``max_seq`` and recorded gaps, under a per-device advisory lock (see
  pg_writer.py); the key then only catches what that already excluded.
* ``*_id`` columns are identities instead of AUTOINCREMENT; payloads are ``bytea``.
"""

from __future__ import annotations

_PARTITIONED = """
CREATE TABLE predictions (
    device text NOT NULL,
    seq bigint NOT NULL,
    site text NOT NULL,
    camera text NOT NULL,
    ts double precision NOT NULL,
    label text NOT NULL,
    confidence double precision NOT NULL,
    probs text,
    model_version text NOT NULL,
    abstain integer NOT NULL,
    flags text,
    latency_ms double precision,
    frame_ts double precision,
    snapshot text,
    received_ts double precision NOT NULL,
    day integer NOT NULL,
    PRIMARY KEY (device, seq, day)
) PARTITION BY RANGE (day);
-- Analysis reads a time window; the dashboard newest-first per device; labelling by snapshot.
CREATE INDEX predictions_ts ON predictions (ts);
CREATE INDEX predictions_device_ts ON predictions (device, ts);
CREATE INDEX predictions_snapshot ON predictions (snapshot) WHERE snapshot IS NOT NULL;
CREATE TABLE predictions_kept PARTITION OF predictions FOR VALUES FROM (0) TO (1);

CREATE TABLE telemetry (
    device text NOT NULL,
    ts double precision NOT NULL,
    site text NOT NULL,
    seq bigint,
    cpu_percent double precision,
    memory_percent double precision,
    disk_percent double precision,
    temp_max double precision,
    latency_p50 double precision,
    latency_p95 double precision,
    latency_p99 double precision,
    inference_fps double precision,
    inference_errors bigint,
    abstain_rate double precision,
    outbox_backlog bigint,
    outbox_evicted bigint,
    model_version text,
    body text NOT NULL,
    received_ts double precision NOT NULL,
    day integer NOT NULL,
    PRIMARY KEY (device, ts, day)
) PARTITION BY RANGE (day);
CREATE INDEX telemetry_ts ON telemetry (ts);

-- Creates the day partition of a partitioned table if missing. Workers on several hosts call it
-- at once at midnight: the advisory lock makes the check-and-create atomic.
CREATE FUNCTION parkwatch_ensure_day(tbl text, d integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    part text := format('%s_d%s', tbl, to_char(to_timestamp(d::double precision * 86400) AT TIME ZONE 'UTC',
                                               'YYYYMMDD'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('parkwatch_partition:' || tbl));
    IF to_regclass(part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)', part, tbl, d, d + 1);
    END IF;
END $$;
"""

V1 = (
    """
CREATE TABLE devices (
    device text PRIMARY KEY,
    site text NOT NULL,
    grp text,
    status text,
    status_ts double precision,
    status_reason text,
    status_rx double precision,
    software text,
    model_version text,
    first_seen double precision,
    last_seen double precision,
    last_msg_ts double precision,
    max_seq bigint,
    evicted_total bigint NOT NULL DEFAULT 0,
    predictions_total bigint NOT NULL DEFAULT 0,
    update_state text,
    update_version text,
    active_version text,
    previous_version text,
    update_reason text,
    update_progress double precision,
    update_ts double precision,
    health text,
    health_reasons text,
    health_ts double precision
);
CREATE INDEX devices_site ON devices (site, device);
"""
    + _PARTITIONED
    + """
CREATE TABLE status_events (
    device text NOT NULL,
    ts double precision NOT NULL,
    state text NOT NULL,
    reason text,
    received_ts double precision NOT NULL,
    PRIMARY KEY (device, ts, state)
);
CREATE INDEX status_events_received ON status_events (received_ts);
CREATE TABLE model_states (
    device text NOT NULL,
    ts double precision NOT NULL,
    state text NOT NULL,
    version text,
    active_version text,
    reason text,
    received_ts double precision NOT NULL,
    PRIMARY KEY (device, ts, state)
);
CREATE INDEX model_states_received ON model_states (received_ts);
CREATE TABLE gaps (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device text NOT NULL,
    site text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    cause text NOT NULL,
    detected_ts double precision NOT NULL
);
CREATE INDEX gaps_device ON gaps (device, first_seq);
CREATE TABLE feedback (
    device text NOT NULL,
    seq bigint NOT NULL,
    site text NOT NULL,
    snapshot text,
    label text NOT NULL,
    predicted text NOT NULL,
    model_version text NOT NULL,
    pred_ts double precision NOT NULL,
    actor text NOT NULL,
    comment text,
    ts double precision NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX feedback_model ON feedback (model_version, pred_ts);
CREATE TABLE drift (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL,
    ts double precision NOT NULL,
    window_start double precision NOT NULL,
    window_end double precision NOT NULL,
    model_version text NOT NULL,
    site text NOT NULL,
    device text NOT NULL,
    n bigint NOT NULL,
    psi double precision,
    js double precision,
    ks double precision,
    ks_p double precision,
    wasserstein double precision,
    abstain_rate double precision,
    flag_rate double precision,
    est_accuracy double precision,
    accuracy double precision,
    n_labels bigint,
    recall_gap double precision,
    drifted integer NOT NULL,
    reasons text NOT NULL,
    details text NOT NULL
);
CREATE INDEX drift_model_site ON drift (model_version, site, ts);
CREATE INDEX drift_ts ON drift (ts, id);
CREATE TABLE inbox_progress (
    worker text PRIMARY KEY,
    inbox_id text NOT NULL,
    upto bigint NOT NULL
);
CREATE TABLE dead_letters (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    worker text NOT NULL,
    topic text NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    received_ts double precision NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX dead_letters_ts ON dead_letters (received_ts);
CREATE TABLE counters (
    name text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE alerts (
    id text PRIMARY KEY,
    key text NOT NULL,
    rule text NOT NULL,
    site text NOT NULL,
    device text,
    subject text NOT NULL,
    severity text NOT NULL,
    state text NOT NULL,
    message text NOT NULL,
    details text NOT NULL,
    opened_ts double precision NOT NULL,
    updated_ts double precision NOT NULL,
    last_seen_ts double precision NOT NULL,
    count bigint NOT NULL DEFAULT 1,
    acked_by text, acked_ts double precision, ack_comment text,
    resolved_by text, resolved_ts double precision, resolve_comment text,
    actions text NOT NULL DEFAULT '[]'
);
CREATE INDEX alerts_key ON alerts (key, state);
CREATE INDEX alerts_state ON alerts (state, opened_ts);
CREATE TABLE alert_events (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    alert_id text NOT NULL,
    ts double precision NOT NULL,
    actor text NOT NULL,
    event text NOT NULL,
    comment text
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);
CREATE TABLE alerts_unpublished (
    alert_id text PRIMARY KEY,
    since_ts double precision NOT NULL
);
"""
)

# Every ingest worker's heartbeat, so `parkwatch cloud inbox` and the dashboard on any host see
# the health and backlog of workers on all hosts.
V2_WORKERS = """
CREATE TABLE ingest_workers (
    worker text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_ts double precision NOT NULL,
    heartbeat_ts double precision NOT NULL,
    state text NOT NULL,
    received bigint NOT NULL DEFAULT 0,
    accepted bigint NOT NULL DEFAULT 0,
    backlog bigint,
    oldest_age_s double precision,
    stored_predictions bigint NOT NULL DEFAULT 0,
    write_errors bigint NOT NULL DEFAULT 0,
    last_error text
);
"""

# Issue 11 (perc-cloud): the regions that held a pet and the frame's lighting, and the hourly
# outcome counts the ingest writer keeps (cloud/fleet/schema.py has the SQLite side).
V3_OUTCOMES = """
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS regions text;
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS ir integer;
CREATE TABLE outcome_hours (
    device text NOT NULL,
    hour bigint NOT NULL,
    site text NOT NULL,
    n bigint NOT NULL,
    n_cat bigint NOT NULL,
    n_dog bigint NOT NULL,
    n_other bigint NOT NULL,
    n_none bigint NOT NULL,
    n_abstain bigint NOT NULL,
    n_ir bigint NOT NULL,
    n_day bigint NOT NULL,
    PRIMARY KEY (device, hour)
);
CREATE INDEX outcome_hours_hour ON outcome_hours (hour);
"""

# Migration 3 created outcome_hours empty, so a store upgraded from version 2 showed no outcomes
# for the predictions it already held (SQLite's upgrade counts them: cloud/fleet/schema.py).
# This counts them, as the writer would have (cloud.fleet.rows.Tally: hour of the clamped
# box timestamp; abstain, then none/neither, then pets; IR/day from the stored ``ir``), for the
# (device, hour)s that have no row yet. An hour the writer already counted is left alone, so
# nothing is counted twice (ON CONFLICT also covers a writer committing the same hour meanwhile);
# the one hour a device was in when a version-3 store started counting stays partial.
V4_OUTCOMES_BACKFILL = """
INSERT INTO outcome_hours (device, hour, site, n, n_cat, n_dog, n_other, n_none, n_abstain, n_ir, n_day)
SELECT device, h, max(site), count(*),
    count(*) FILTER (WHERE abstain = 0 AND label = 'cat'),
    count(*) FILTER (WHERE abstain = 0 AND label = 'dog'),
    count(*) FILTER (WHERE abstain = 0 AND label NOT IN ('cat', 'dog', 'none', 'neither', 'abstain')),
    count(*) FILTER (WHERE abstain = 0 AND label IN ('none', 'neither')),
    count(*) FILTER (WHERE abstain <> 0 OR label = 'abstain'),
    count(*) FILTER (WHERE ir = 1),
    count(*) FILTER (WHERE ir = 0)
FROM (
    SELECT device, site, label, abstain, ir,
        floor(least(greatest(ts, 0), 9007199254740992) / 3600)::bigint AS h
    FROM predictions
) AS p
GROUP BY device, h
ON CONFLICT (device, hour) DO NOTHING;
"""

# Each materializer's counters, added in the transaction of every batch (cloud/fleet/materializer_stats.py).
V5_MATERIALIZER_STATS = """
CREATE TABLE materializer_stats (
    worker text PRIMARY KEY,
    materialized bigint NOT NULL DEFAULT 0,
    stored_predictions bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    last_batch_ts double precision,
    last_batch_rows bigint NOT NULL DEFAULT 0,
    lag_s double precision
);
"""
