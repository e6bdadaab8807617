"""Lineage on a partial install: what cannot be followed is listed in ``missing`` (JSON and
text), and the rest is still answered. Real fleet and registry stores on SQLite files, through
the real CLI and the real dashboard app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.lineage import lineage
from cloud.registry.models import ModelRecord
from cloud.registry.store import Registry
from shared.cli import main
from tests.dashutil import client_for, make_cfg, seed_fleet, seed_users, sign_in
from tests.test_governance_alerts import _write_cfg


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = make_cfg(tmp_path)
    # Predictions made by model version "m1", which the registry has never heard of.
    seed_fleet(c, devices=1, hours=0.05, step_s=60, predictions=10)
    return c


def run(cfg: Any, tmp_path: Path, *args: str) -> Any:
    env = {"PARKWATCH_CONFIG": str(_write_cfg(tmp_path, cfg))}
    return CliRunner().invoke(main, ["cloud", "lineage", *args], env=env)


def register(cfg: Any, version: str, **kw: Any) -> None:
    with Registry(cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version=version, gate_passed=True, package_dir="", tarball="", tarball_sha256="", **kw
            )
        )


def test_prediction_of_unregistered_model_keeps_the_prediction(cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = run(cfg, tmp_path, "box0000:3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    p = out["prediction"]
    assert (p["id"], p["device"], p["camera"], p["site"]) == ("box0000:3", "box0000", "cam1", "park1")
    assert isinstance(p["ts"], float) and p["model_version"] == "m1"
    assert out["device"]["device"] == "box0000" and out["model_version"] == "m1"
    assert "model" not in out and "training_run" not in out and "dataset" not in out
    missing = out["missing"]
    assert any(m.startswith("model version m1:") and "no model version 'm1'" in m for m in missing)
    for what in ("training run", "parameters", "dataset", "code commit"):
        assert f"{what}: model version m1 is not registered" in missing, missing
    # Approvals, rollouts and audit entries are found by the version string alone.
    assert out["approvals"] == [] and out["rollouts"] == [] and out["audit"] == []

    r = run(cfg, tmp_path, "box0000:3")
    assert r.exit_code == 0, r.output
    assert "prediction box0000:3\n" in r.output and "camera cam1" in r.output
    assert "  - model version m1: no model version 'm1'" in r.output
    assert "  - training run: model version m1 is not registered\n" in r.output
    # for people: UTC times, no Python reprs (issue 15, D19)
    assert "UTC" in r.output and "{'" not in r.output and "['" not in r.output

    # The dashboard's lineage page shows the same answer instead of an error.
    seed_users(cfg)
    c = client_for(cfg)
    sign_in(c, "viewer")
    page = c.get("/lineage", params={"q": "box0000:3"}).text
    assert 'id="lineage-result"' in page and "cam1" in page and "is not registered" in page


def test_model_without_run_dataset_or_commit_lists_them_missing(cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    register(cfg, "m-bare")
    r = run(cfg, tmp_path, "m-bare", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["model"]["version"] == "m-bare"
    assert out["missing"] == [
        "training run: model version m-bare records none",
        "parameters: model version m-bare records none",
        "dataset: model version m-bare records none",
        "code commit: model version m-bare records none",
    ]
    r = run(cfg, tmp_path, "m-bare")
    assert r.exit_code == 0, r.output
    for what in ("training run", "parameters", "dataset", "code commit"):
        assert f"  - {what}: model version m-bare records none" in r.output, r.output
    # A model version asked for by name must exist: that is still an error, not a partial answer.
    r = run(cfg, tmp_path, "m-nowhere")
    assert r.exit_code == 1 and "no model version 'm-nowhere'" in r.output


def test_commit_recorded_by_the_build_is_found_and_dangling_refs_are_missing(cfg) -> None:  # type: ignore[no-untyped-def]
    # What cloud.packaging.lineage.base_lineage writes: the commit inside "code".
    register(
        cfg,
        "m1",
        run_id="run-gone",
        dataset_id="d" * 64,
        lineage={"code": {"commit": "0123abc", "dirty": False}, "parameters": {"seed": 7}},
    )
    out = lineage(cfg, "box0000:5")
    assert out["prediction"]["camera"] == "cam1" and out["model"]["version"] == "m1"
    assert out["code"]["commit"] == "0123abc" and out["code"]["dirty"] is False
    assert out["parameters"] == {"seed": 7}
    missing = out["missing"]
    assert not any(m.startswith(("code commit", "parameters", "model version")) for m in missing), missing
    assert any(m.startswith("training run run-gone:") for m in missing), missing
    assert any(m.startswith(f"dataset {'d' * 64}:") for m in missing), missing
