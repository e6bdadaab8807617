"""The test of record for issue 11: train on the sample lake with none/ (composed by symlinks),
then measure the five figures with the box's frame pipeline on held-out data only (the test
split: close-ups, no-pet photos, and 1280x720 scenes at 30 % of the height built from them)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.evaluation.scenes import build_specs, render
from edge.config import InferenceConfig
from edge.model import load_model
from edge.perception.config import RegionsConfig
from edge.perception.pipeline import FramePipeline
from edge.preprocess import load_image

TARGETS = {
    "closeup_pets_right": 0.98,
    "closeup_none_rejected": 0.95,
    "scene_pets_right": 0.95,
    "grey_scene_pets_right": 0.90,
    "empty_scenes_rejected": 0.95,
}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # training (<= 10 min idle, cold) + 1,000 frames, beside another worker
def test_trained_model_meets_the_issue_11_targets_on_held_out_data(
    tmp_path: Path, pets_sample: Path, record_property: Callable[[str, object], None]
) -> None:
    nopet = pets_sample.parent / "nopet-dev" / "none"
    assert nopet.is_dir(), f"{nopet} is missing: the nopet-dev dataset is needed"
    lake = tmp_path / "lake"
    lake.mkdir()
    for label, target in (("cat", pets_sample / "cat"), ("dog", pets_sample / "dog"), ("none", nopet)):
        (lake / label).symlink_to(target, target_is_directory=True)
    cache = Path(
        os.environ.get("PARKWATCH_TEST_CACHE") or Path(__file__).parent.parent / ".cache" / "test-models"
    )
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[train]\nfeature_cache_dir = "{cache / "features"}"\n')
    runner = CliRunner()
    res = runner.invoke(cloud, ["ingest", str(lake), "--config", str(cfg), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = json.loads(res.output)
    res = runner.invoke(
        cloud, ["train", "--dataset", ds["dataset_version"], "--config", str(cfg), "--json", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    trained = json.loads(res.output)

    lines = [json.loads(x) for x in Path(ds["manifest"]).read_text().splitlines()]
    test = [(lake / ln["path"], ln["label"]) for ln in lines if ln["split"] == "test"]
    pets = [(p, lab) for p, lab in test if lab != "none"]
    bgs = [p for p, lab in test if lab == "none"]
    model = load_model(Path(trained["package"]))
    pipe = FramePipeline(model, RegionsConfig(), InferenceConfig().confidence_threshold)

    def labels(loads: list) -> list[str]:
        out: list[str] = []
        for i in range(0, len(loads), 8):
            out += [r.label for r in pipe.classify([f() for f in loads[i : i + 8]])]
        return out

    got = labels([lambda p=p: load_image(p) for p, _ in test])
    specs = build_specs(pets, bgs, 150, 150, 31, (0.3, 0.3))
    got_scenes = labels([lambda s=s: render(s) for s in specs])
    figures = {
        "closeup_pets_right": sum(g == lab for g, (_, lab) in zip(got, test, strict=True) if lab != "none")
        / len(pets),
        "closeup_none_rejected": sum(
            g == "none" for g, (_, lab) in zip(got, test, strict=True) if lab == "none"
        )
        / len(bgs),
    }
    for kind, name in (
        ("pet", "scene_pets_right"),
        ("grey", "grey_scene_pets_right"),
        ("empty", "empty_scenes_rejected"),
    ):
        pairs = [(g, s.label) for g, s in zip(got_scenes, specs, strict=True) if s.kind == kind]
        figures[name] = sum(g == want for g, want in pairs) / len(pairs)
    record_property("figures", json.dumps({k: round(v, 4) for k, v in figures.items()}))
    missed = {k: round(v, 3) for k, v in figures.items() if v < TARGETS[k]}
    assert not missed, f"below target: {missed}; all: {figures}"
