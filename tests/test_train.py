"""Training on a small subset: search recorded, deterministic, gated, packaged, interruptible."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.config import CloudConfig
from cloud.registry.errors import StageError
from cloud.registry.store import Registry
from cloud.training import trainer
from cloud.training.errors import TrainingError, TrainingInterrupted
from cloud.training.trainer import TrainOptions
from shared.config import validate_config
from shared.modelpkg import verify_package
from tests.test_ingest import make_lake

SMALL = """
data_dir = "{data}"
[train]
augment_copies = 1
search = "grid"
[train.space]
lr = [0.003, 0.01]
weight_decay = [0.0001]
epochs = [8]
label_smoothing = [0.0]
[gate]
min_accuracy = 0.5
min_recall_per_class = 0.3
max_recall_gap = 0.7
max_ece = 0.5
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pets_sample: Path) -> dict:
    root = tmp_path_factory.mktemp("train")
    lake = make_lake(pets_sample, root / "lake", per_label=24)
    cfg_path = root / "cloud.toml"
    cfg_path.write_text(SMALL.format(data=root / "data"))
    runner = CliRunner()
    res = runner.invoke(cloud, ["ingest", str(lake), "--config", str(cfg_path), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = json.loads(res.output)["dataset_version"]
    res = runner.invoke(
        cloud, ["train", "--dataset", ds[:12], "--config", str(cfg_path), "--json", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    return {
        "root": root,
        "lake": lake,
        "cfg_path": cfg_path,
        "dataset": ds,
        "trained": json.loads(res.output),
    }


def load_cfg(env: dict, **gate: float) -> CloudConfig:
    import tomllib

    data = tomllib.loads(env["cfg_path"].read_text())
    data["gate"].update(gate)
    return validate_config(CloudConfig, data, str(env["cfg_path"]))


def test_train_registers_a_scored_candidate_with_lineage(env: dict) -> None:
    out = env["trained"]
    assert {"model_version", "package", "metrics"} <= set(out)
    assert 0.0 <= out["metrics"]["accuracy"] <= 1.0 and out["gate_passed"] is True
    pkg = Path(out["package"])
    verify_package(pkg)
    assert (pkg / "evaluation.html").read_text().count("<svg") == 3
    lineage = json.loads((pkg / "lineage.json").read_text())
    assert lineage["dataset_version"] == env["dataset"]
    assert lineage["parameters"]["head"] == out["best_params"]
    assert lineage["metrics"]["accuracy"] == out["metrics"]["accuracy"]
    with Registry(env["root"] / "data" / "registry.db") as reg:
        m = reg.get_model(out["model_version"])
        assert m.stage == "candidate" and m.gate_passed and m.dataset_id == env["dataset"]
        trials = reg.list_trials(m.run_id or "")
        assert len(trials) == 2 and all("val_accuracy" in t.metrics and t.duration_s > 0 for t in trials)
        assert reg.get_run(m.run_id or "").status == "completed"
        assert [e.action for e in reg.audit.entries(subject=f"model:{m.version}")] == ["model.registered"]


def test_models_list_show_and_evaluate_commands(env: dict) -> None:
    runner = CliRunner()
    cfg = str(env["cfg_path"])
    version = env["trained"]["model_version"]
    res = runner.invoke(cloud, ["models", "list", "--config", cfg, "--json"])
    assert version in [m["version"] for m in json.loads(res.output)]
    res = runner.invoke(cloud, ["models", "show", version, "--config", cfg, "--json"])
    shown = json.loads(res.output)
    assert shown["lineage"]["dataset_version"] == env["dataset"] and len(shown["trials"]) == 2
    res = runner.invoke(cloud, ["models", "show", version, "--config", cfg])
    assert "dataset" in res.output and env["dataset"] in res.output
    res = runner.invoke(cloud, ["evaluate", version, "--config", cfg, "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)
    assert ev["metrics"]["accuracy"] == env["trained"]["metrics"]["accuracy"]
    assert Path(ev["report_html"]).read_text().count("<svg") == 3
    res = runner.invoke(cloud, ["evaluate", version, "--config", cfg])
    assert res.exit_code == 0, res.output
    # text for people: the verdict with its thresholds, never "gate passed []" (issue 15, D19)
    assert "gate passed (min_accuracy" in res.output and "[]" not in res.output and "{'" not in res.output
    res = runner.invoke(cloud, ["models", "show", version, "--config", cfg])
    assert "gate (config)  passed" in res.output and "{'" not in res.output


def test_same_seed_same_model(env: dict) -> None:
    cfg = load_cfg(env)
    with Registry(cfg.paths.registry_db) as reg:
        again = trainer.train(cfg, reg, TrainOptions(env["dataset"], show_progress=False, version="again"))
    first = json.loads((Path(env["trained"]["package"]) / "evaluation.json").read_text())["predictions"]
    second = json.loads((again.package / "evaluation.json").read_text())["predictions"]
    assert np.allclose([p["probs"] for p in first], [p["probs"] for p in second], atol=1e-6)
    assert again.best_params == env["trained"]["best_params"]


def test_a_model_below_the_gate_is_registered_as_failing_and_cannot_be_promoted(
    env: dict, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_cfg(env, max_ece=0.0, min_accuracy=1.0)
    caplog.set_level(logging.INFO, logger="parkwatch.cloud.train")
    with Registry(cfg.paths.registry_db) as reg:
        res = trainer.train(cfg, reg, TrainOptions(env["dataset"], show_progress=False, version="gated"))
        assert res.gate["passed"] is False and res.gate["failures"]
        # without a terminal there are no progress bars: the log says each stage and the verdict
        said = [r.getMessage() for r in caplog.records if r.name == "parkwatch.cloud.train"]
        assert said[0].startswith(f"run {res.run_id} on dataset {env['dataset']}")
        assert any(m.startswith("features and search done in") for m in said)
        assert said[-1].startswith("registered gated in") and said[-1].endswith("gate failed")
        assert reg.get_model("gated").gate_passed is False
        with pytest.raises(StageError, match="promotion gate"):
            reg.set_stage("gated", "staging")


def test_ctrl_c_leaves_nothing_half_made(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_cfg(env)
    real = trainer.train_head
    calls = {"n": 0}

    def flaky(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer, "train_head", flaky)
    with Registry(cfg.paths.registry_db) as reg:
        before = {m.version for m in reg.list_models()}
        with pytest.raises(TrainingInterrupted, match="nothing was registered"):
            trainer.train(cfg, reg, TrainOptions(env["dataset"], show_progress=False, version="stopped"))
        assert {m.version for m in reg.list_models()} == before
        run = reg.list_runs(env["dataset"])[-1]
        assert run.status == "interrupted" and len(reg.list_trials(run.id)) == 1
    assert not any(
        p.name.startswith(".staging") or p.name.startswith("stopped") for p in cfg.paths.models_dir.iterdir()
    )


def test_a_changed_lake_is_refused(env: dict, tmp_path: Path) -> None:
    cfg = load_cfg(env)
    victim = sorted((env["lake"] / "cat").glob("*.jpg"))[0]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\x00")
        with (
            Registry(cfg.paths.registry_db) as reg,
            pytest.raises(TrainingError, match="changed since ingest"),
        ):
            trainer.train(cfg, reg, TrainOptions(env["dataset"], show_progress=False, version="never"))
    finally:
        victim.write_bytes(original)


def test_unknown_dataset_is_a_clear_cli_error(env: dict) -> None:
    res = CliRunner().invoke(cloud, ["train", "--dataset", "ffffffffffff", "--config", str(env["cfg_path"])])
    assert res.exit_code == 1 and "no dataset" in res.output


def test_torchrun_ranks_fill_the_feature_cache_between_them(
    env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.training import distributed
    from cloud.training.backbone import PREPROCESS
    from cloud.training.data import load_run_data
    from cloud.training.features import FeatureStore

    assert distributed.shard(list(range(7)), 1, 3) == [1, 4]  # type: ignore[arg-type]
    cfg_path = tmp_path / "cloud.toml"
    cfg_path.write_text(
        env["cfg_path"]
        .read_text()
        .replace("[train]\n", f'[train]\nfeature_cache_dir = "{tmp_path / "fc"}"\n', 1)
    )
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert distributed.main(["--dataset", env["dataset"], "--config", str(cfg_path)]) == 0
    cfg = load_cfg(env)
    with Registry(cfg.paths.registry_db) as reg:
        data = load_run_data(reg, env["dataset"], cfg.train.val_fraction)
    store = FeatureStore(tmp_path / "fc", PREPROCESS, cfg.train.seed, engine=cfg.train.feature_engine)
    assert store.missing([(i.sha256, i.path) for i in data.train], 2) == []


def test_optional_finetune_changes_the_backbone_and_still_packages(env: dict) -> None:
    import tomllib

    data = tomllib.loads(env["cfg_path"].read_text())
    data["train"].update(finetune_epochs=1, finetune_blocks=1, finetune_lr=1e-3, batch_size=16)
    cfg = validate_config(CloudConfig, data, str(env["cfg_path"]))
    with Registry(cfg.paths.registry_db) as reg:
        res = trainer.train(cfg, reg, TrainOptions(env["dataset"], show_progress=False, version="tuned"))
    lineage = json.loads((res.package / "lineage.json").read_text())
    assert lineage["parameters"]["finetune"]["epochs"] == 1 and "finetune" in res.timings
    assert lineage["parity"]["max_abs_diff"] <= 1e-4
    tuned = json.loads((res.package / "evaluation.json").read_text())["predictions"]
    plain = json.loads((Path(env["trained"]["package"]) / "evaluation.json").read_text())["predictions"]
    assert not np.allclose([p["probs"] for p in tuned], [p["probs"] for p in plain], atol=1e-4)
