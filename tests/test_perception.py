"""The perception seams: rejection metadata, the per-region decision, regions, IR, and the frame
pipeline and ``parkwatch edge classify`` on the real baseline package through ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge.model import load_model
from edge.perception.config import RegionsConfig
from edge.perception.ir import is_ir
from edge.perception.pipeline import FramePipeline
from edge.perception.regions import Region, Zone, closer, plan_regions
from edge.preprocess import load_image
from shared.modelpkg import (
    META_REJECTION,
    PET_SCORE_OUTPUT,
    MissingMetadata,
    ModelMetadata,
    PreprocessSpec,
    RejectionSpec,
    parse_metadata,
)
from shared.perception import closer_candidates, decide, pet_evidence

REPO = Path(__file__).resolve().parent.parent
PARKWATCH = str(Path(sys.executable).parent / "parkwatch")
SPEC = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _meta(rejection: RejectionSpec | None, labels: tuple[str, ...] = ("cat", "dog", "none")) -> ModelMetadata:
    return ModelMetadata(labels=labels, preprocess=SPEC, model_version="v1", rejection=rejection)


# ---- metadata -----------------------------------------------------------------------------------


def test_rejection_round_trips_through_onnx_props_and_old_props_have_none() -> None:
    rej = RejectionSpec(
        none_label="none",
        score_output="pet_score",
        threshold=0.4,
        region_threshold=0.6,
        chosen_on="validation",
    )
    meta = _meta(rej)
    back = parse_metadata(meta.to_props())
    assert back == meta and back.rejection == rej
    assert back.pet_labels == ("cat", "dog")
    old = {k: v for k, v in meta.to_props().items() if k != META_REJECTION}
    assert parse_metadata(old).rejection is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"threshold": 1.5}, r"rejection\.threshold: .*less than or equal to 1.*cloud train"),
        ({"full_score_weight": 2.0}, r"rejection\.full_score_weight: .*less than or equal to 1"),
        ({"none_label": "nothing"}, "nothing"),  # not one of the labels
        ({"score_output": "logits"}, r"rejection\.score_output"),
        ({"surprise": 1}, r"rejection\.surprise: .*newer parkwatch code.*update this side first"),
        ({"figures": {"auroc": float("nan")}}, "finite"),
        ({"figures": {f"k{i}": 0.5 for i in range(40)}}, r"rejection\.figures"),  # bounded
    ],
)
def test_bad_rejection_metadata_is_refused_naming_the_key(bad: dict, words: str) -> None:
    """A strict parser refuses what it does not know; the message names the key and says what
    to do (an unknown key: the package is newer than this box's software)."""
    props = _meta(None).to_props()
    props[META_REJECTION] = json.dumps({"none_label": "none", "threshold": 0.5, **bad})
    with pytest.raises(MissingMetadata, match=words):
        parse_metadata(props)


# ---- decision -----------------------------------------------------------------------------------


def test_decide_without_rejection_is_the_old_argmax() -> None:
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    assert decide(probs, None, ("cat", "dog", "none"), None, full=True) == [
        ("dog", pytest.approx(0.7)),
        ("none", pytest.approx(0.8)),
    ]


def test_decide_needs_both_signals_to_agree() -> None:
    rej = RejectionSpec(none_label="none", score_output="pet_score", threshold=0.5)
    labels = ("cat", "dog", "none")
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # head: cat; ImageNet: cat  -> cat
            [0.9, 0.05, 0.05],  # head: cat; ImageNet: nothing like a pet -> none
            [0.05, 0.05, 0.9],  # head: none; ImageNet: pet -> none
        ]
    )
    score = np.array([0.95, 0.01, 0.95])
    ev = pet_evidence(probs, score, labels, rej, full=True)
    assert ev is not None and ev[0] > 0.9 and ev[1] < 0.2 and ev[2] < 0.4
    out = decide(probs, score, labels, rej, full=True)
    assert out[0][0] == "cat" and out[0][1] == pytest.approx(0.9 / 0.95, abs=1e-6)
    assert [lab for lab, _ in out[1:]] == ["none", "none"]
    assert all(0.5 <= c <= 1 for _, c in out)
    # a stricter threshold turns the borderline into none, and none's confidence nears 0.5
    assert decide(probs[:1], score[:1], labels, rej, threshold=0.99, full=False)[0][0] == "none"
    assert decide(probs[:1], score[:1], labels, rej, threshold=0.99, full=False)[0][1] < 0.55


def test_decide_with_pet_score_only_rejects_a_cat_dog_model() -> None:
    rej = RejectionSpec(score_output="pet_score", threshold=0.3)
    out = decide(np.array([[0.6, 0.4], [0.2, 0.8]]), np.array([0.05, 0.9]), ("cat", "dog"), rej, full=True)
    assert out[0][0] == "none" and out[1] == ("dog", pytest.approx(0.8))


# ---- regions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1280, 720), (640, 480), (500, 375), (375, 500), (1920, 1080)])
def test_tiles_cover_every_pixel_and_stay_inside(size: tuple[int, int]) -> None:
    w, h = size
    regions = plan_regions(w, h, RegionsConfig(), SPEC)
    assert regions[0].source == "full"
    covered = np.zeros((h, w), bool)
    for r in regions:
        assert r.x >= 0 and r.y >= 0 and r.x + r.w <= w and r.y + r.h <= h
        if r.source == "tile":
            assert r.w == r.h
        covered[r.y : r.y + r.h, r.x : r.x + r.w] = True
    assert covered.all()
    assert len(regions) <= RegionsConfig().max_regions


def test_a_pet_at_a_third_of_the_height_fills_a_good_part_of_some_tile() -> None:
    w, h = 1280, 720
    regions = plan_regions(w, h, RegionsConfig(), SPEC)
    side = int(0.3 * h)
    for x in range(0, w - side, 37):
        for y in range(0, h - side, 41):
            best = max(
                (min(r.x + r.w, x + side) - max(r.x, x))
                * (min(r.y + r.h, y + side) - max(r.y, y))
                / (side * side)
                * min(1.0, side / r.h * 2)
                for r in regions
                if r.source != "full"
            )
            assert best > 0.5, (x, y)


def test_motion_and_zones_replace_tiles() -> None:
    cfg = RegionsConfig()
    still = plan_regions(1280, 720, cfg, SPEC, motion=[])
    assert [r.source for r in still] == ["full"]
    moving = plan_regions(
        1280, 720, cfg, SPEC, motion=[(1200, 650, 30, 40)], zones=[Zone.rect("gate", 10, 10, 200, 100)]
    )
    sources = [r.source for r in moving]
    assert sources == ["full", "zone", "motion"]
    m = moving[2]
    assert m.w == m.h >= cfg.min_region and m.x + m.w <= 1280 and m.y + m.h <= 720
    assert moving[1].zone == "gate"
    tri = Zone("bench", ((100.0, 100.0), (300.0, 120.0), (150.0, 400.0)))
    z = plan_regions(1280, 720, cfg, SPEC, motion=[], zones=[tri])[1]
    assert z.x <= 100 and z.y <= 100 and z.x + z.w >= 300 and z.y + z.h >= 400


def test_a_model_that_cannot_reject_gets_only_the_whole_frame() -> None:
    assert [r.source for r in plan_regions(1280, 720, RegionsConfig(), SPEC, can_reject=False)] == ["full"]
    assert [r.source for r in plan_regions(1280, 720, RegionsConfig(enabled=False), SPEC)] == ["full"]


def test_ir_is_a_frame_without_colour(pets_sample: Path) -> None:
    img = load_image(sorted((pets_sample / "cat").glob("*.jpg"))[0])
    grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    ok, enc = cv2.imencode(".jpg", grey)
    assert ok
    assert is_ir(np.asarray(cv2.imdecode(enc, cv2.IMREAD_COLOR), np.uint8))
    assert is_ir(np.asarray(grey, np.uint8))
    assert not is_ir(img)


# ---- real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nopet() -> Path:
    p = REPO.parent / "shared" / "datasets" / "nopet-dev" / "none"
    assert p.is_dir(), f"{p} is missing: the nopet-dev dataset is needed"
    return p


def test_baseline_package_has_a_pet_score_and_rejection(
    baseline_package: Path, pets_sample: Path, nopet: Path
) -> None:
    model = load_model(baseline_package)
    rej = model.metadata.rejection
    assert rej is not None and rej.score_output == "pet_score" and rej.threshold is not None
    imgs = [load_image(p) for p in sorted((pets_sample / "dog").glob("*.jpg"))[:4]]
    imgs += [load_image(p) for p in sorted(nopet.glob("*.JPEG"))[:4]]
    batch = model.preprocessor(imgs)
    out = model.run_full(batch)
    assert out.pet_score is not None and out.pet_score.shape == (8,)
    np.testing.assert_allclose(out.probs, model.run(batch), atol=1e-6)  # old callers see the same
    assert out.pet_score[:4].min() > 0.5 > out.pet_score[4:].max()


def test_old_model_without_rejection_behaves_as_before(
    baseline_package: Path, tmp_path: Path, pets_sample: Path
) -> None:
    proto = onnx.load(str(baseline_package / "model.onnx"))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != META_REJECTION]
    del proto.metadata_props[:]
    for k, v in keep:
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    model = load_model(tmp_path / "old.onnx")
    assert model.metadata.rejection is None and model.score_output is None
    img = load_image(sorted((pets_sample / "cat").glob("*.jpg"))[3])
    out = model.run_full(model.preprocessor([img]))
    assert out.pet_score is None
    pipe = FramePipeline(model, RegionsConfig(), 0.6)
    res = pipe.classify([img])[0]
    assert res.evaluated == 1 and res.label in ("cat", "abstain")


def _scene(pet: np.ndarray, background: np.ndarray, x: int, y: int, height: int) -> np.ndarray:
    frame = cv2.resize(background, (1280, 720), interpolation=cv2.INTER_AREA)
    ph, pw = pet.shape[:2]
    w = round(pw * height / ph)
    frame[y : y + height, x : x + w] = cv2.resize(pet, (w, height), interpolation=cv2.INTER_AREA)
    return frame


def test_pipeline_finds_a_pet_at_the_edge_of_a_wide_frame_and_rejects_empty_ones(
    baseline_package: Path, pets_sample: Path, nopet: Path
) -> None:
    model = load_model(baseline_package)
    pipe = FramePipeline(model, RegionsConfig(), 0.6)
    dog = load_image(sorted((pets_sample / "dog").glob("*.jpg"))[10])
    bgs = [load_image(p) for p in sorted(nopet.glob("*.JPEG"))[300:303]]  # objects, not animals
    h = 380  # about half the frame height, at the right edge
    x = 1280 - round(dog.shape[1] * h / dog.shape[0]) - 5  # at the right edge: a centre crop misses it
    scene = _scene(dog, bgs[0], x, 720 - h - 5, h)
    res = pipe.classify([scene, *[np.asarray(cv2.resize(b, (1280, 720)), np.uint8) for b in bgs]])
    assert res[0].label == "dog", res[0]
    assert res[0].regions and all(r.region.source != "full" for r in res[0].regions[:1])
    best = res[0].regions[0].region
    assert best.x + best.w > x + 50  # the region that held the dog overlaps it
    assert all(r.label in ("none", "abstain") for r in res[1:]), res[1:]  # never a pet
    assert [r.label for r in res[1:]].count("none") >= 2, res[1:]
    assert all(r.regions == [] for r in res[1:])


def test_classify_cli_json_reports_each_file_and_an_unreadable_one(
    baseline_package: Path, pets_sample: Path, nopet: Path, tmp_path: Path
) -> None:
    cat = sorted((pets_sample / "cat").glob("*.jpg"))[5]
    bench = sorted(nopet.glob("*.JPEG"))[200]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    cmd = [PARKWATCH, "edge", "classify", "--model", str(baseline_package), "--json"]
    res = subprocess.run(
        [*cmd, str(cat), str(broken), str(bench), str(tmp_path / "missing.jpg")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 1, res.stderr
    rows = json.loads(res.stdout)
    assert [r["file"] for r in rows] == [str(cat), str(broken), str(bench), str(tmp_path / "missing.jpg")]
    assert all({"file", "label", "confidence", "regions"} <= set(r) for r in rows)
    assert rows[0]["label"] == "cat" and rows[0]["confidence"] >= 0.6 and rows[0]["regions"]
    assert rows[2]["label"] == "none" and rows[2]["regions"] == []
    # the image cap refuses a file whose header it cannot read, before decoding it
    assert rows[1]["label"] is None and "not a JPEG, PNG, BMP or WebP" in rows[1]["error"]
    assert rows[3]["label"] is None and "cannot read" in rows[3]["error"]
    text = subprocess.run(
        [*cmd[:-1], str(cat)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert text.returncode == 0 and text.stdout.startswith(f"{cat}: cat ")


def test_a_second_look_cuts_a_region_into_smaller_squares_inside_it() -> None:
    cfg = RegionsConfig()
    tile = Region(956, 396, 324, 324, source="tile")
    looks = closer(tile, cfg)
    assert len(looks) == cfg.second_look_grid**2 == 4
    side = round(324 * cfg.second_look_scale)
    assert all(z.source == "zoom" and z.w == z.h == side for z in looks)
    assert all(tile.x <= z.x and z.x + z.w <= 1280 and tile.y <= z.y and z.y + z.h <= 720 for z in looks)
    covered = np.zeros((720, 1280), bool)
    for z in looks:
        covered[z.y : z.y + z.h, z.x : z.x + z.w] = True
    assert covered[396:720, 956:1280].all()  # together they see all of the region
    # Squares below the smallest useful size add no detail: a close-up photo's tiles get none.
    assert closer(Region(0, 0, 262, 262, source="tile"), cfg) == []
    assert len(closer(Region(0, 0, 288, 288, source="tile"), cfg)) == 4
    assert (
        len(closer(Region(0, 0, 504, 504, "tile"), RegionsConfig(second_look_grid=3, second_look_scale=0.5)))
        == 9
    )


def test_the_second_look_goes_to_the_strongest_tiles_never_the_whole_view() -> None:
    labels = ["cat", "dog", "none"]
    rej = RejectionSpec(none_label="none", score_output=PET_SCORE_OUTPUT, threshold=0.5, evidence="logit")
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3], [0.01, 0.01, 0.98]], np.float32)
    score = np.array([0.99, 0.2, 0.6, 0.01], np.float32)
    eligible = [False, True, True, True]  # row 0 is the whole-frame view
    assert closer_candidates(probs, score, labels, rej, eligible, 1) == [2]
    assert closer_candidates(probs, score, labels, rej, eligible, 2) == [2, 1]
    assert closer_candidates(probs, score, labels, rej, eligible, 0) == []
    assert closer_candidates(probs, score, labels, None, eligible, 2) == []  # cannot reject: no tiles


def test_pipeline_takes_a_second_look_at_a_small_pet(
    baseline_package: Path, pets_sample: Path, nopet: Path
) -> None:
    model = load_model(baseline_package)
    dog = load_image(sorted((pets_sample / "dog").glob("*.jpg"))[10])
    bg = load_image(sorted(nopet.glob("*.JPEG"))[300])
    scene = _scene(dog, bg, 700, 300, 216)  # 30 % of the frame height
    planned = len(plan_regions(1280, 720, RegionsConfig(), model.spec))
    off = FramePipeline(model, RegionsConfig(second_look=0), 0.6).classify([scene])[0]
    on = FramePipeline(model, RegionsConfig(), 0.6).classify([scene])[0]
    assert off.evaluated == planned and on.evaluated == planned + 4
    assert on.label == "dog", on
    two = FramePipeline(model, RegionsConfig(second_look=2), 0.6).classify([scene, scene])
    assert [r.evaluated for r in two] == [planned + 8] * 2  # batched: both frames, one more run
