"""Registry tables for experiment runs, their trials, and model versions with stage and gate.

Stage policy kept here (the one rule every caller must obey): a version that failed the
promotion gate can never move to ``staging`` or ``production``. Who may move a version and why
is recorded by ``cloud.registry.approvals``; this module only stores the current stage.
"""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils
from pydantic import BaseModel, Field

from cloud.registry.datasets import now
from cloud.registry.errors import NotFoundError, StageError
from cloud.registry.tx import transaction

STAGES = ("candidate", "staging", "production", "archived", "rejected")
GATED_STAGES = ("staging", "production")
RUN_STATUSES = ("running", "completed", "failed", "interrupted")


class TrialRecord(BaseModel):
    run_id: str
    index: int
    params: dict[str, Any]
    metrics: dict[str, Any]
    duration_s: float
    status: str = "completed"
    created_at: str = ""


class RunRecord(BaseModel):
    id: str
    dataset_id: str
    status: str
    search: str
    seed: int
    config: dict[str, Any] = Field(default_factory=dict)
    best_params: dict[str, Any] | None = None
    model_version: str | None = None
    error: str | None = None
    started_at: str = ""
    finished_at: str | None = None


class ModelRecord(BaseModel):
    """A registered model version. ``package_dir``/``tarball`` point at the packaged artefacts."""

    version: str
    stage: str = "candidate"
    gate_passed: bool
    gate: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    package_dir: str
    tarball: str
    tarball_sha256: str
    dataset_id: str | None = None
    run_id: str | None = None
    created_at: str = ""
    stage_changed_at: str = ""


def _model(row: dict[str, Any]) -> ModelRecord:
    return ModelRecord(
        version=row["version"],
        stage=row["stage"],
        gate_passed=bool(row["gate_passed"]),
        gate=json.loads(row["gate"] or "{}"),
        metrics=json.loads(row["metrics"] or "{}"),
        lineage=json.loads(row["lineage"] or "{}"),
        package_dir=row["package_dir"],
        tarball=row["tarball"],
        tarball_sha256=row["tarball_sha256"],
        dataset_id=row["dataset_id"],
        run_id=row["run_id"],
        created_at=row["created_at"],
        stage_changed_at=row["stage_changed_at"],
    )


def _run(row: dict[str, Any]) -> RunRecord:
    return RunRecord(
        id=row["id"],
        dataset_id=row["dataset_id"],
        status=row["status"],
        search=row["search"],
        seed=row["seed"],
        config=json.loads(row["config"] or "{}"),
        best_params=json.loads(row["best_params"]) if row["best_params"] else None,
        model_version=row["model_version"],
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def check_stage_change(model: ModelRecord, stage: str) -> None:
    """Pure policy: refuse unknown stages and any promotion of a model that failed the gate."""
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if stage in GATED_STAGES and not model.gate_passed:
        failed = "; ".join(model.gate.get("failures", [])) or "see `parkwatch cloud models show`"
        raise StageError(
            f"model {model.version} failed the promotion gate ({failed}) and can never "
            f"move to {stage}; train a better model"
        )


class ModelTables:
    db: sqlite_utils.Database

    # --- experiment runs and trials -------------------------------------------------------------
    def start_run(self, run_id: str, dataset_id: str, search: str, seed: int, config: dict[str, Any]) -> None:
        with transaction(self.db) as conn:
            conn.execute(
                "INSERT INTO experiment_runs (id, dataset_id, status, search, seed, config, started_at) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (run_id, dataset_id, search, seed, json.dumps(config, sort_keys=True, default=str), now()),
            )

    def record_trial(self, trial: TrialRecord) -> None:
        with transaction(self.db) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO trials (run_id, idx, params, metrics, duration_s, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    trial.run_id,
                    trial.index,
                    json.dumps(trial.params, sort_keys=True),
                    json.dumps(trial.metrics, sort_keys=True),
                    trial.duration_s,
                    trial.status,
                    now(),
                ),
            )

    def finish_run(
        self,
        run_id: str,
        status: str,
        best_params: dict[str, Any] | None = None,
        model_version: str | None = None,
        error: str | None = None,
    ) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        with transaction(self.db) as conn:
            conn.execute(
                "UPDATE experiment_runs SET status = ?, best_params = ?, model_version = ?, error = ?, "
                "finished_at = ? WHERE id = ?",
                (
                    status,
                    json.dumps(best_params, sort_keys=True) if best_params is not None else None,
                    model_version,
                    error,
                    now(),
                    run_id,
                ),
            )

    def get_run(self, run_id: str) -> RunRecord:
        rows = list(self.db["experiment_runs"].rows_where("id = ?", [run_id]))
        if not rows:
            raise NotFoundError(f"no experiment run {run_id!r} in the registry")
        return _run(rows[0])

    def list_runs(self, dataset_id: str | None = None) -> list[RunRecord]:
        where, args = ("dataset_id = ?", [dataset_id]) if dataset_id else (None, [])
        return [_run(r) for r in self.db["experiment_runs"].rows_where(where, args, order_by="started_at")]

    def list_trials(self, run_id: str) -> list[TrialRecord]:
        return [
            TrialRecord(
                run_id=r["run_id"],
                index=r["idx"],
                params=json.loads(r["params"]),
                metrics=json.loads(r["metrics"]),
                duration_s=r["duration_s"],
                status=r["status"],
                created_at=r["created_at"],
            )
            for r in self.db["trials"].rows_where("run_id = ?", [run_id], order_by="idx")
        ]

    # --- model versions -------------------------------------------------------------------------
    def register_model(self, model: ModelRecord) -> ModelRecord:
        """Insert a new version (stage forced to ``candidate``); an existing version is an error."""
        stamp = now()
        with transaction(self.db) as conn:
            if conn.execute("SELECT 1 FROM model_versions WHERE version = ?", (model.version,)).fetchone():
                raise StageError(
                    f"model version {model.version} is already registered; versions are "
                    "immutable, train again for a new one"
                )
            conn.execute(
                "INSERT INTO model_versions (version, stage, gate_passed, gate, metrics, lineage, "
                "package_dir, tarball, tarball_sha256, dataset_id, run_id, created_at, stage_changed_at) "
                "VALUES (?, 'candidate', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model.version,
                    int(model.gate_passed),
                    json.dumps(model.gate, sort_keys=True),
                    json.dumps(model.metrics, sort_keys=True),
                    json.dumps(model.lineage, sort_keys=True),
                    model.package_dir,
                    model.tarball,
                    model.tarball_sha256,
                    model.dataset_id,
                    model.run_id,
                    stamp,
                    stamp,
                ),
            )
        return self.get_model(model.version)

    def get_model(self, version: str) -> ModelRecord:
        rows = list(self.db["model_versions"].rows_where("version = ?", [version]))
        if not rows:
            raise NotFoundError(
                f"no model version {version!r} in the registry: see `parkwatch cloud models list`"
            )
        return _model(rows[0])

    def list_models(self, stage: str | None = None) -> list[ModelRecord]:
        where, args = ("stage = ?", [stage]) if stage else (None, [])
        return [
            _model(r)
            for r in self.db["model_versions"].rows_where(
                where, args, order_by="created_at desc, version desc"
            )
        ]

    def set_stage(self, version: str, stage: str) -> ModelRecord:
        """Move a version to ``stage``; refuses promotion of a gate-failing model (:class:`StageError`)."""
        with transaction(self.db) as conn:
            row = conn.execute(
                "SELECT gate_passed, gate FROM model_versions WHERE version = ?", (version,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no model version {version!r} in the registry")
            current = ModelRecord(
                version=version,
                gate_passed=bool(row[0]),
                gate=json.loads(row[1] or "{}"),
                package_dir="",
                tarball="",
                tarball_sha256="",
            )
            check_stage_change(current, stage)
            conn.execute(
                "UPDATE model_versions SET stage = ?, stage_changed_at = ? WHERE version = ?",
                (stage, now(), version),
            )
        return self.get_model(version)

    def update_model_metrics(
        self, version: str, metrics: dict[str, Any], gate: dict[str, Any], gate_passed: bool
    ) -> ModelRecord:
        """Re-evaluation may only confirm or lower a verdict: a failed gate is never turned into a pass."""
        current = self.get_model(version)
        passed = gate_passed and current.gate_passed
        with transaction(self.db) as conn:
            conn.execute(
                "UPDATE model_versions SET metrics = ?, gate = ?, gate_passed = ? WHERE version = ?",
                (json.dumps(metrics, sort_keys=True), json.dumps(gate, sort_keys=True), int(passed), version),
            )
        return self.get_model(version)
