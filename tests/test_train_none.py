"""Training with a ``none`` label (a symlinked lake), rejection thresholds chosen on validation,
the pet score in the exported graph, perception figures in the evaluation and the gate; and a
cat/dog-only model that still rejects non-pets. Small subsets: real torch, real ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.evaluation.config import GateConfig
from cloud.evaluation.gate import check_gate
from edge.model import load_model
from edge.perception.config import RegionsConfig
from edge.perception.pipeline import FramePipeline
from edge.preprocess import load_image
from tests.test_ingest import make_lake

CONFIG = """
data_dir = "{data}"
[train]
augment_copies = 1
scene_tiles = 6
scene_tiles_empty = 4
calibration_scenes = 4
calibration_empty_scenes = 4
[train.space]
lr = [0.003]
weight_decay = [0.0001]
epochs = [8]
label_smoothing = [0.0]
[evaluation]
scenes = 3
empty_scenes = 3
[gate]
min_accuracy = 0.3
min_recall_per_class = 0.0
max_recall_gap = 1.0
max_ece = 1.0
"""


def _ingest_and_train(root: Path, lake: Path) -> tuple[Path, str, dict]:
    cfg = root / "cloud.toml"
    cfg.write_text(CONFIG.format(data=root / "data"))
    runner = CliRunner()
    res = runner.invoke(cloud, ["ingest", str(lake), "--config", str(cfg), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = json.loads(res.output)["dataset_version"]
    res = runner.invoke(
        cloud, ["train", "--dataset", ds[:12], "--config", str(cfg), "--json", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    return cfg, ds, json.loads(res.output)


@pytest.fixture(scope="module")
def nopet(pets_sample: Path) -> Path:
    p = pets_sample.parent / "nopet-dev" / "none"
    assert p.is_dir(), f"{p} is missing: the nopet-dev dataset is needed"
    return p


@pytest.fixture(scope="module")
def with_none(tmp_path_factory: pytest.TempPathFactory, pets_sample: Path, nopet: Path) -> dict:
    root = tmp_path_factory.mktemp("none")
    pets = make_lake(pets_sample, root / "pets", per_label=30)
    none = root / "nopet" / "none"
    none.mkdir(parents=True)
    for f in sorted(nopet.glob("*.JPEG"))[::8][:40]:
        shutil.copy(f, none / f.name)
    lake = root / "lake"
    lake.mkdir()
    for label, target in (("cat", pets / "cat"), ("dog", pets / "dog"), ("none", none)):
        (lake / label).symlink_to(target, target_is_directory=True)
    cfg, ds, trained = _ingest_and_train(root, lake)
    return {"root": root, "cfg": cfg, "dataset": ds, "trained": trained}


def test_none_is_a_class_and_the_package_says_how_it_rejects(with_none: dict) -> None:
    out = with_none["trained"]
    pkg = Path(out["package"])
    model = load_model(pkg)
    assert model.labels == ("cat", "dog", "none")
    rej = model.metadata.rejection
    assert rej is not None and rej.none_label == "none" and rej.score_output == "pet_score"
    assert rej.chosen_on == "validation" and rej.threshold is not None and rej.region_threshold is not None
    assert rej.region_threshold >= rej.threshold
    assert "val_closeup_pets_right" in rej.figures and "val_empty_scenes_rejected" in rej.figures
    sess = ort.InferenceSession(str(pkg / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "pet_score"]
    m = out["metrics"]
    assert set(m["per_class"]) == {"cat", "dog", "none"}
    p = m["perception"]
    for key in (
        "closeup_pets_right",
        "closeup_none_rejected",
        "rejection_auroc",
        "rejection_fpr_at_95_tpr",
        "scene_pets_right",
        "grey_scene_pets_right",
        "empty_scenes_rejected",
    ):
        assert p[key] is not None and 0.0 <= p[key] <= 1.0, key
    assert p["n_pet_scenes"] == 3 and p["n_grey_scenes"] == 3 and p["n_empty_scenes"] == 3
    assert p["rejection_auroc"] > 0.9  # even a tiny head: the ImageNet pet score separates them
    assert "Perception" in (pkg / "evaluation.html").read_text()


def test_evaluate_reports_perception_and_the_gate_can_require_it(with_none: dict) -> None:
    runner = CliRunner()
    version = with_none["trained"]["model_version"]
    res = runner.invoke(cloud, ["evaluate", version, "--config", str(with_none["cfg"]), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)
    assert ev["metrics"]["perception"]["empty_scenes_rejected"] is not None
    strict = GateConfig(
        min_accuracy=0.0,
        min_recall_per_class=0.0,
        max_recall_gap=1.0,
        max_ece=1.0,
        min_empty_scene_rejection=1.01 - 1e-9,
        max_rejection_fpr_at_95_tpr=0.0,
    )
    gate = check_gate(ev["metrics"], strict)
    assert not gate["passed"]
    assert any(f.startswith("empty_scenes_rejected") for f in gate["failures"])


def test_gate_names_a_required_figure_that_was_not_measured() -> None:
    metrics = {"accuracy": 1.0, "per_class": {}, "recall_gap": 0.0, "ece": 0.0}
    gate = check_gate(metrics, GateConfig(min_scene_accuracy=0.9))
    assert not gate["passed"]
    assert "scene_pets_right is required by gate.min_scene_accuracy" in gate["failures"][0]
    assert check_gate(metrics, GateConfig())["passed"]


def test_a_cat_dog_model_still_rejects_non_pets(tmp_path: Path, pets_sample: Path, nopet: Path) -> None:
    lake = make_lake(pets_sample, tmp_path / "lake", per_label=24)
    _, _, trained = _ingest_and_train(tmp_path, lake)
    model = load_model(Path(trained["package"]))
    rej = model.metadata.rejection
    assert model.labels == ("cat", "dog")
    assert rej is not None and rej.none_label is None and rej.score_output == "pet_score"
    assert rej.threshold is not None and rej.threshold <= 0.5
    pipe = FramePipeline(model, RegionsConfig(), 0.6)
    photos = [load_image(p) for p in sorted(nopet.glob("*.JPEG"))[300:340:4]]  # objects, not animals
    labels = [r.label for r in pipe.classify(photos)]
    assert labels.count("none") >= 8, labels
