"""The registry database's tables, as numbered migrations (shared/sqlite.py), and its opener.

One SQLite file (WAL) holds datasets, runs, trials, model versions, stage decisions, rollouts and
the audit log. Migration 1 is the tables as they shipped before numbered migrations, in the form
sqlite-utils created them (``IF NOT EXISTS``, so a registry.db from then is adopted unchanged);
a change is a new migration at the end, a shipped one is never edited.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from cloud.registry.errors import RegistryError
from shared.sqlite import Migration, Schema, SchemaError, open_sqlite

BUSY_TIMEOUT_MS = 10_000

V1 = """
CREATE TABLE IF NOT EXISTS "datasets" (
   "id" TEXT PRIMARY KEY,
   "source" TEXT,
   "labels" TEXT,
   "counts" TEXT,
   "n_files" INTEGER,
   "duplicates" INTEGER,
   "quarantined" INTEGER,
   "manifest_path" TEXT,
   "params" TEXT,
   "created_at" TEXT,
   "last_ingested_at" TEXT
);
CREATE TABLE IF NOT EXISTS "dataset_files" (
   "dataset_id" TEXT REFERENCES "datasets"("id"),
   "sha256" TEXT,
   "label" TEXT,
   "split" TEXT,
   "path" TEXT,
   "width" INTEGER,
   "height" INTEGER,
   "bytes" INTEGER,
   PRIMARY KEY ("dataset_id", "sha256")
);
CREATE TABLE IF NOT EXISTS "dataset_duplicates" (
   "dataset_id" TEXT REFERENCES "datasets"("id"),
   "sha256" TEXT,
   "path" TEXT,
   "kept_path" TEXT,
   PRIMARY KEY ("dataset_id", "path")
);
CREATE TABLE IF NOT EXISTS "dataset_quarantine" (
   "dataset_id" TEXT REFERENCES "datasets"("id"),
   "path" TEXT,
   "label" TEXT,
   "reason" TEXT,
   "detail" TEXT,
   PRIMARY KEY ("dataset_id", "path")
);
-- Further folders a dataset version was ingested from (the first source is kept in datasets).
CREATE TABLE IF NOT EXISTS "dataset_sources" (
   "dataset_id" TEXT REFERENCES "datasets"("id"),
   "source" TEXT,
   "first_ingested_at" TEXT,
   "last_ingested_at" TEXT,
   PRIMARY KEY ("dataset_id", "source")
);
CREATE INDEX IF NOT EXISTS idx_dataset_files_split ON dataset_files(dataset_id, split);
CREATE TABLE IF NOT EXISTS "experiment_runs" (
   "id" TEXT PRIMARY KEY,
   "dataset_id" TEXT,
   "status" TEXT,
   "search" TEXT,
   "seed" INTEGER,
   "config" TEXT,
   "best_params" TEXT,
   "model_version" TEXT,
   "error" TEXT,
   "started_at" TEXT,
   "finished_at" TEXT
);
CREATE TABLE IF NOT EXISTS "trials" (
   "run_id" TEXT REFERENCES "experiment_runs"("id"),
   "idx" INTEGER,
   "params" TEXT,
   "metrics" TEXT,
   "duration_s" REAL,
   "status" TEXT,
   "created_at" TEXT,
   PRIMARY KEY ("run_id", "idx")
);
CREATE TABLE IF NOT EXISTS "model_versions" (
   "version" TEXT PRIMARY KEY,
   "stage" TEXT,
   "gate_passed" INTEGER,
   "gate" TEXT,
   "metrics" TEXT,
   "lineage" TEXT,
   "package_dir" TEXT,
   "tarball" TEXT,
   "tarball_sha256" TEXT,
   "dataset_id" TEXT,
   "run_id" TEXT,
   "created_at" TEXT,
   "stage_changed_at" TEXT
);
-- Approvals and rejections (cloud/registry/approvals.py).
CREATE TABLE IF NOT EXISTS "stage_history" (
   "id" INTEGER PRIMARY KEY,
   "version" TEXT,
   "decision" TEXT,
   "from_stage" TEXT,
   "to_stage" TEXT,
   "actor" TEXT,
   "reason" TEXT,
   "forced" INTEGER,
   "ts" REAL
);
CREATE INDEX IF NOT EXISTS "idx_stage_history_version" ON "stage_history" ("version");
-- Rollouts (cloud/release/store.py): "a successful staging rollout" is part of the approval rules.
CREATE TABLE IF NOT EXISTS "rollouts" (
   "id" INTEGER PRIMARY KEY,
   "version" TEXT,
   "grp" TEXT,
   "stage" TEXT,
   "previous_version" TEXT,
   "kind" TEXT,
   "actor" TEXT,
   "reason" TEXT,
   "status" TEXT,
   "status_reason" TEXT,
   "started_ts" REAL,
   "finished_ts" REAL,
   "devices_total" INTEGER,
   "devices_active" INTEGER
);
CREATE INDEX IF NOT EXISTS "idx_rollouts_grp" ON "rollouts" ("grp");
-- The hash-chained, append-only audit log (cloud/registry/audit.py).
CREATE TABLE IF NOT EXISTS "audit_log" (
   "id" INTEGER PRIMARY KEY,
   "ts" REAL NOT NULL,
   "actor" TEXT NOT NULL,
   "action" TEXT NOT NULL,
   "subject" TEXT NOT NULL,
   "details" TEXT NOT NULL,
   "prev_hash" TEXT NOT NULL,
   "hash" TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_audit_log_subject" ON "audit_log" ("subject");
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

REGISTRY_SCHEMA = Schema(
    "registry database",
    (Migration(1, V1, "datasets, runs, models, approvals, rollouts, audit log"),),
)


def open_db(
    path: str | Path, schema: Schema = REGISTRY_SCHEMA, synchronous: str = "NORMAL"
) -> sqlite_utils.Database:
    """Open (creating if needed) the registry, or another cloud-side file kept the same way
    (``release.db``), through the one SQLite opener: WAL, a busy timeout, foreign keys,
    ``synchronous=NORMAL`` unless told otherwise, the schema brought up to date.

    WAL lets the dashboard read while a training run writes; the timeout makes concurrent CLI
    commands wait instead of failing with "database is locked".
    """
    p = Path(path)
    try:
        conn = open_sqlite(
            p, schema, synchronous=synchronous, busy_timeout_s=BUSY_TIMEOUT_MS / 1000, foreign_keys=True
        )
    except SchemaError as e:
        raise RegistryError(str(e)) from e
    except (OSError, sqlite3.Error) as e:
        raise RegistryError(
            f"cannot open {schema.name} {p}: {e}; check the path and permissions (cloud config data_dir)"
        ) from e
    return sqlite_utils.Database(conn)
