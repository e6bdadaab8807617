"""Registry store: model versions, stages and the gate rule, runs and trials, atomic writes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.registry.datasets import DatasetFile, DatasetRecord
from cloud.registry.errors import NotFoundError, StageError
from cloud.registry.models import ModelRecord, TrialRecord
from cloud.registry.store import Registry


def model(version: str, passed: bool = True) -> ModelRecord:
    return ModelRecord(
        version=version,
        gate_passed=passed,
        gate={"passed": passed, "failures": [] if passed else ["accuracy 0.5 < 0.97"]},
        metrics={"accuracy": 0.99 if passed else 0.5},
        lineage={"dataset_version": "d" * 64},
        package_dir=f"/m/{version}",
        tarball=f"/m/{version}.tar.gz",
        tarball_sha256="0" * 64,
        dataset_id="d" * 64,
        run_id="run-1",
    )


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db")


def test_wal_mode_and_reopen(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    r.register_model(model("v1"))
    r.close()
    assert Registry(tmp_path / "registry.db").get_model("v1").stage == "candidate"
    mode = sqlite3.connect(tmp_path / "registry.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_register_get_list_and_set_stage(reg: Registry) -> None:
    m = reg.register_model(model("v1").model_copy(update={"stage": "production"}))
    assert m.stage == "candidate"  # a new version always starts as a candidate
    reg.register_model(model("v2"))
    assert {x.version for x in reg.list_models()} == {"v1", "v2"}
    assert reg.set_stage("v1", "staging").stage == "staging"
    assert [x.version for x in reg.list_models("staging")] == ["v1"]
    assert reg.get_model("v1").lineage == {"dataset_version": "d" * 64}


def test_a_gate_failing_model_can_never_be_promoted(reg: Registry) -> None:
    reg.register_model(model("bad", passed=False))
    for stage in ("staging", "production"):
        with pytest.raises(StageError, match="failed the promotion gate"):
            reg.set_stage("bad", stage)
    assert reg.get_model("bad").stage == "candidate"
    assert reg.set_stage("bad", "rejected").stage == "rejected"
    reg.update_model_metrics("bad", {"accuracy": 1.0}, {"passed": True, "failures": []}, gate_passed=True)
    assert reg.get_model("bad").gate_passed is False  # re-evaluation never turns a fail into a pass


def test_errors_name_what_to_do(reg: Registry) -> None:
    with pytest.raises(NotFoundError, match="models list"):
        reg.get_model("nope")
    reg.register_model(model("v1"))
    with pytest.raises(StageError, match="immutable"):
        reg.register_model(model("v1"))
    with pytest.raises(StageError, match="unknown stage"):
        reg.set_stage("v1", "prod")
    with pytest.raises(NotFoundError):
        reg.set_stage("ghost", "staging")


def test_runs_and_trials(reg: Registry) -> None:
    reg.start_run("run-1", "d" * 64, "grid", 7, {"x": 1})
    reg.record_trial(
        TrialRecord(
            run_id="run-1", index=0, params={"lr": 0.1}, metrics={"val_accuracy": 0.9}, duration_s=1.5
        )
    )
    reg.finish_run("run-1", "completed", best_params={"lr": 0.1}, model_version="v1")
    run = reg.get_run("run-1")
    assert run.status == "completed" and run.best_params == {"lr": 0.1} and run.finished_at
    assert [t.metrics for t in reg.list_trials("run-1")] == [{"val_accuracy": 0.9}]


def test_a_failed_dataset_write_leaves_nothing(reg: Registry) -> None:
    rec = DatasetRecord(
        id="a" * 64,
        source="/lake",
        labels=["cat", "dog"],
        counts={},
        n_files=2,
        duplicates=0,
        quarantined=0,
        manifest_path="/m",
    )

    def files() -> Iterator[DatasetFile]:
        yield DatasetFile(
            sha256="1" * 64, label="cat", split="train", path="cat/1.jpg", width=1, height=1, bytes=1
        )
        raise RuntimeError("disk vanished")

    with pytest.raises(RuntimeError):
        reg.register_dataset(rec, files())
    assert reg.list_datasets() == []
    assert reg.db.execute("SELECT count(*) FROM dataset_files").fetchone()[0] == 0


def test_dataset_prefix_lookup(reg: Registry) -> None:
    rec = DatasetRecord(
        id="abcdef" + "0" * 58,
        source="/lake",
        labels=["cat", "dog"],
        counts={},
        n_files=0,
        duplicates=0,
        quarantined=0,
        manifest_path="/m",
    )
    assert reg.register_dataset(rec, []) is True
    assert reg.register_dataset(rec, []) is False
    assert reg.get_dataset("abcdef00").id == rec.id
    with pytest.raises(NotFoundError, match="too short"):
        reg.get_dataset("abc")


def test_audit_log_shares_the_registry_file(reg: Registry) -> None:
    reg.audit.append("tester", "model.registered", "v1", {"a": 1})
    assert reg.audit.verify().ok
