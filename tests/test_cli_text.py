"""Text output is for people (issue 15, D19): no Python reprs, UTC times, thresholds shown.

Real registry files and the real CLI (CliRunner on the click group); `--json` keeps the exact form.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.registry.models import ModelRecord
from cloud.registry.store import Registry
from tests.release_support import PASSING_METRICS, cloud_config, mqtt_cfg, write_cloud_toml

REPR = re.compile(r"\{'|\['|\bNone\b|\bTrue\b|\bFalse\b")
UNIX_TIME = re.compile(r"\b1[6-9]\d{8}(\.\d+)?\b")


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cloud, list(args))
    return res.exit_code, res.output


def readable(text: str) -> None:
    assert not REPR.search(text), f"a Python repr in the text output:\n{text}"
    assert not UNIX_TIME.search(text), f"a unix time in the text output:\n{text}"


def registry_with_models(tmp_path: Path) -> str:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1))
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    lineage = {
        "dataset_version": "d" * 64,
        "run_id": None,
        "code": {"commit": "abc123", "dirty": True, "repo": "/src/parkwatch"},
        "parameters": {"head": {"lr": 0.001, "dropout": 0.2}, "seed": 7, "search": "grid"},
        "packages": {"torch": "2.14.1", "onnx": None},
        "host": {"hostname": "builder", "cpus": 2},
        "parity": {"max_abs_diff": 5e-6, "images": 8},
    }
    metrics = {
        **PASSING_METRICS,
        "n": 400,
        "roc_auc": 0.998,
        "per_class": {
            "cat": {"precision": 0.97, "recall": 0.98, "f1": 0.975},
            "dog": {"precision": 0.99, "recall": 0.99, "f1": 0.99},
        },
    }
    with Registry(cfg.paths.registry_db) as reg:
        gate = {"passed": True, "failures": [], "thresholds": {"max_ece": 0.1, "min_accuracy": 0.9}}
        for version, m in (("1.0.0", metrics), ("1.1.0", {**metrics, "ece": 0.062})):
            reg.register_model(
                ModelRecord(
                    version=version,
                    gate_passed=True,
                    gate=gate,
                    metrics=m,
                    lineage=lineage,
                    package_dir="/pkgs/" + version,
                    tarball="",
                    tarball_sha256="",
                )
            )
    return toml


def test_models_show_is_readable_and_shows_both_gates(tmp_path: Path) -> None:
    toml = registry_with_models(tmp_path)
    code, out = run("models", "show", "1.1.0", "--config", toml)
    assert code == 0, out
    readable(out)
    # the serving config's gate (what approval checks) with its thresholds, and the trainer's
    assert re.search(r"gate \(config\)\s+FAILED\s+\(min_accuracy 0.97, .*max_ece 0.05\)", out), out
    assert re.search(r"gate \(trained\)\s+passed\s+\(max_ece 0.1, min_accuracy 0.9\)", out), out
    assert "ECE 0.0620 > 0.05" in out
    assert "head.lr" in out and "0.001" in out and "(uncommitted changes)" in out
    assert "max_abs_diff 5e-06" in out
    assert re.search(r"created\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out), out
    code, out = run("models", "show", "1.0.0", "--config", toml)
    assert code == 0 and re.search(r"gate \(config\)\s+passed", out), out
    code, out = run("models", "show", "1.1.0", "--json", "--config", toml)
    data = json.loads(out)
    assert data["gate_now"]["passed"] is False and data["gate_now"]["thresholds"]["max_ece"] == 0.05


def test_lineage_of_a_model_is_readable(tmp_path: Path) -> None:
    toml = registry_with_models(tmp_path)
    code, out = run("lineage", "1.0.0", "--config", toml)
    assert code == 0, out
    readable(out)
    assert "model 1.0.0" in out and "abc123 (uncommitted changes)" in out
    assert re.search(r"head\.lr\s+0\.001", out), out
    assert "missing" in out and "  - training run: model version 1.0.0 records none" in out


@pytest.mark.slow
def test_cloud_baseline_builds_the_package_the_edge_runs_first(tmp_path: Path) -> None:
    """edge.example.toml's [model] initial needs a package no command built (issue 15, D20)."""
    from edge.config import InferenceConfig
    from edge.model import load_model

    code, out = run("baseline", str(tmp_path / "models"), "--version", "baseline-test", "--json")
    assert code == 0, out
    built = json.loads(out)
    pkg = Path(built["package"])
    assert pkg == tmp_path / "models" / "baseline-test" and (pkg / "manifest.json").is_file()
    model = load_model(pkg, InferenceConfig(threads=1))  # the edge's own loader accepts it
    assert model.version == "baseline-test"
    code, out = run("baseline", str(tmp_path / "models"), "--version", "baseline-test")
    assert code == 1 and "already exists" in out  # versions are immutable: never overwritten


def test_the_exit_codes_the_docs_give_are_the_ones_the_cli_uses(tmp_path: Path) -> None:
    """The docs said 1/2 while usage errors exit 64 (issue 15, D20)."""
    from shared.cli import EXIT_USAGE, main
    from shared.clitools import EXIT_CONFIG, EXIT_ERROR

    doc = (Path(__file__).resolve().parent.parent / "docs" / "cloud-engineer-build.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d+) \| ", doc, flags=re.M)}
    assert documented == {0, EXIT_ERROR, EXIT_CONFIG, EXIT_USAGE}
    res = CliRunner().invoke(main, ["cloud", "models", "show", "--no-such-option"])
    assert res.exit_code == EXIT_USAGE == 64
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nhots = 1\n")
    res = CliRunner().invoke(main, ["cloud", "models", "list", "--config", str(bad)])
    assert res.exit_code == EXIT_CONFIG


def test_train_text_shows_what_the_gate_judges_for_a_rejecting_model() -> None:
    from cloud.cli.models import _human_train

    metrics: dict[str, object] = {
        "accuracy": 0.9633,
        "roc_auc": 0.99,
        "ece": 0.02,
        "recall_gap": 0.14,
        "n": 409,
    }
    r = {
        "package": "/models/v1",
        "tarball": "/models/v1.tar.gz",
        "model_version": "v1",
        "gate_passed": True,
        "gate": {"failures": []},
        "metrics": metrics,
        "best_params": {"lr": 0.001},
        "trials": [],
    }
    assert "on the box" not in _human_train(r)  # no rejection: the argmax is what the box says
    metrics["decisions"] = {"accuracy": 0.9853, "recall_gap": 0.038, "abstained": 0.0073}
    text = _human_train(r)
    readable(text)
    assert "on the box (what the gate judges): accuracy 0.9853  recall_gap 0.0380  abstained 0.0073" in text
