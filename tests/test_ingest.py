"""Ingest: validation, quarantine, de-dup, stable split, content-addressed versions, bad input."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.data.config import IngestConfig
from cloud.data.errors import IngestError
from cloud.data.ingest import ingest
from cloud.data.split import side
from cloud.registry.store import Registry

PER_LABEL = 12


def make_lake(src: Path, dest: Path, per_label: int = PER_LABEL, offset: int = 0) -> Path:
    for label in ("cat", "dog"):
        (dest / label).mkdir(parents=True, exist_ok=True)
        files = sorted((src / label).glob("*.jpg"))[offset : offset + per_label]
        for f in files:
            shutil.copy(f, dest / label / f.name)
    return dest


@pytest.fixture
def lake(tmp_path: Path, pets_sample: Path) -> Path:
    return make_lake(pets_sample, tmp_path / "lake")


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "data" / "registry.db")


def run(lake: Path, reg: Registry, tmp_path: Path, **cfg: object) -> dict:
    res = ingest(lake, reg, tmp_path / "data" / "datasets", IngestConfig(**cfg), show_progress=False)
    return res.to_json()


def test_ingest_counts_split_and_version_are_stable(lake: Path, reg: Registry, tmp_path: Path) -> None:
    first = run(lake, reg, tmp_path)
    assert first["new"] is True
    assert first["counts"]["total"] == {"cat": PER_LABEL, "dog": PER_LABEL}
    total = sum(first["counts"]["train"].values()) + sum(first["counts"]["test"].values())
    assert total == 2 * PER_LABEL
    again = run(lake, reg, tmp_path)
    assert again["dataset_version"] == first["dataset_version"] and again["new"] is False
    assert len(reg.list_datasets()) == 1
    manifest = Path(first["manifest"]).read_bytes()
    import hashlib

    assert hashlib.sha256(manifest).hexdigest() == first["dataset_version"]
    lines = [json.loads(x) for x in manifest.splitlines()]
    assert set(lines[0]) == {"sha256", "label", "split", "path"}
    assert [ln["sha256"] for ln in lines] == sorted(ln["sha256"] for ln in lines)


def test_a_file_never_changes_side_when_the_lake_grows(
    lake: Path, reg: Registry, tmp_path: Path, pets_sample: Path
) -> None:
    v1 = run(lake, reg, tmp_path)
    before = {f.sha256: f.split for f in reg.dataset_files(v1["dataset_version"])}
    make_lake(pets_sample, lake, per_label=10, offset=PER_LABEL)
    v2 = run(lake, reg, tmp_path)
    assert v2["dataset_version"] != v1["dataset_version"]
    after = {f.sha256: f.split for f in reg.dataset_files(v2["dataset_version"])}
    assert len(after) == len(before) + 20
    assert all(after[h] == s for h, s in before.items())
    assert all(s == side(h, 0.2) for h, s in after.items())


def test_duplicates_are_dropped_and_reported(lake: Path, reg: Registry, tmp_path: Path) -> None:
    src = sorted((lake / "cat").glob("*.jpg"))[0]
    shutil.copy(src, lake / "cat" / "copy-of-it.jpg")
    (lake / "cat" / "nested").mkdir()
    shutil.copy(src, lake / "cat" / "nested" / "again.jpg")
    out = run(lake, reg, tmp_path)
    assert out["counts"]["total"]["cat"] == PER_LABEL
    dup_paths = sorted(d["path"] for d in out["duplicates"])
    assert dup_paths == ["cat/copy-of-it.jpg", "cat/nested/again.jpg"]
    assert all(d["kept"] == f"cat/{src.name}" for d in out["duplicates"])


def test_bad_files_are_quarantined_with_reasons(lake: Path, reg: Registry, tmp_path: Path) -> None:
    good = sorted((lake / "dog").glob("*.jpg"))[0].read_bytes()
    (lake / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[200:] = b"\x00" * (len(corrupt) - 200)
    (lake / "dog" / "corrupt.jpg").write_bytes(bytes(corrupt))
    (lake / "dog" / "notes.txt").write_text("not a photo")
    (lake / "dog" / "fake.jpg").write_text("<html>not a jpeg</html>")
    (lake / "dog" / "empty.jpg").write_bytes(b"")
    import cv2
    import numpy as np

    cv2.imwrite(str(lake / "dog" / "tiny.png"), np.zeros((10, 40, 3), np.uint8))
    os.symlink(lake / "dog" / "gone.jpg", lake / "dog" / "dangling.jpg")
    os.symlink(lake / "dog" / "loop-b.jpg", lake / "dog" / "loop-a.jpg")
    os.symlink(lake / "dog" / "loop-a.jpg", lake / "dog" / "loop-b.jpg")
    os.symlink(lake / "dog", lake / "dog" / "again")  # directory loop
    out = run(lake, reg, tmp_path)
    reasons = {q["path"]: q["reason"] for q in out["quarantined"]}
    assert reasons == {
        "dog/truncated.jpg": "corrupt",
        "dog/corrupt.jpg": "corrupt",
        "dog/notes.txt": "not-an-image",
        "dog/fake.jpg": "not-an-image",
        "dog/empty.jpg": "empty",
        "dog/tiny.png": "too-small",
        "dog/dangling.jpg": "unreadable",
        "dog/loop-a.jpg": "symlink-loop",
        "dog/loop-b.jpg": "symlink-loop",
        "dog/again": "symlink-loop",
    }
    assert all(q["detail"] for q in out["quarantined"])
    assert out["counts"]["total"] == {"cat": PER_LABEL, "dog": PER_LABEL}
    stored = {q.path: q.reason for q in reg.dataset_quarantine(out["dataset_version"])}
    assert stored == reasons


def test_same_bytes_under_two_labels_is_a_conflict(lake: Path, reg: Registry, tmp_path: Path) -> None:
    src = sorted((lake / "cat").glob("*.jpg"))[0]
    shutil.copy(src, lake / "dog" / "actually-a-cat.jpg")
    out = run(lake, reg, tmp_path)
    conflicts = sorted(q["path"] for q in out["quarantined"] if q["reason"] == "label-conflict")
    assert conflicts == [f"cat/{src.name}", "dog/actually-a-cat.jpg"]
    assert out["counts"]["total"]["cat"] == PER_LABEL - 1


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no label sub-folders"),
        (lambda p: (p / "cat").mkdir(), "only one label folder"),
        (lambda p: ((p / "cat").mkdir(), (p / "dog").mkdir()), "no files"),
        (lambda p: ((p / "cat").mkdir(), (p / "Dogs & Puppies!").mkdir()), "bad label folder name"),
        (lambda p: ((p / "cat").mkdir(), (p / "abstain").mkdir()), "reserved"),
        (
            lambda p: ((p / "cat").mkdir(), (p / "dog").mkdir(), (p / "stray.jpg").write_bytes(b"x")),
            "outside any label folder",
        ),
    ],
    ids=["empty", "single-label", "empty-labels", "odd-characters", "reserved-label", "stray-image"],
)
def test_bad_lakes_are_refused_and_nothing_is_registered(
    tmp_path: Path, reg: Registry, setup: Callable[[Path], object], message: str
) -> None:
    root = tmp_path / "lake"
    root.mkdir()
    setup(root)
    with pytest.raises(IngestError, match=message):
        run(root, reg, tmp_path)
    assert reg.list_datasets() == []


def test_a_label_whose_files_are_all_bad_is_refused(lake: Path, reg: Registry, tmp_path: Path) -> None:
    for f in (lake / "dog").glob("*.jpg"):
        f.write_bytes(b"garbage")
    with pytest.raises(IngestError, match="only 1 label"):
        run(lake, reg, tmp_path)
    assert reg.list_datasets() == []


def test_missing_source_is_a_clear_error(tmp_path: Path, reg: Registry) -> None:
    with pytest.raises(IngestError, match="not a folder"):
        run(tmp_path / "nope", reg, tmp_path)


def test_parallel_and_serial_hashing_agree(tmp_path: Path, pets_sample: Path) -> None:
    lake = make_lake(pets_sample, tmp_path / "lake", per_label=40)
    a = run(lake, Registry(tmp_path / "a.db"), tmp_path, workers=1)
    b = run(lake, Registry(tmp_path / "b.db"), tmp_path, workers=2)
    assert a["dataset_version"] == b["dataset_version"]


def test_cli_ingest_json_and_datasets_commands(lake: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    runner = CliRunner()
    res = runner.invoke(cloud, ["ingest", str(lake), "--config", str(cfg), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {"dataset_version", "counts", "duplicates", "quarantined"} <= set(out)
    res = runner.invoke(cloud, ["datasets", "list", "--config", str(cfg), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)[0]["id"] == out["dataset_version"]
    res = runner.invoke(
        cloud, ["datasets", "show", out["dataset_version"][:10], "--config", str(cfg), "--json"]
    )
    shown = json.loads(res.output)
    assert shown["id"] == out["dataset_version"] and shown["counts"] == out["counts"]
    res = runner.invoke(cloud, ["datasets", "show", "ffffffffff", "--config", str(cfg)])
    assert res.exit_code == 1 and "no dataset" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cloud, ["ingest", str(empty), "--config", str(cfg), "--json"])
    assert res.exit_code == 1 and json.loads(res.output.splitlines()[0])["ok"] is False


def test_header_parser_agrees_with_pillow(pets_sample: Path) -> None:
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from cloud.data.validate import _header, jpeg_size

    files = sorted(pets_sample.rglob("*.jpg"))[::60]
    for f in files:
        data = f.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert _header(data) == (im.format, *im.size)
    _ok, png = cv2.imencode(".png", np.zeros((37, 53, 3), np.uint8))
    assert _header(png.tobytes()) == ("PNG", 53, 37)
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x08") is None  # scan before any frame header
    assert jpeg_size(b"not a jpeg") is None


def _crash(path: str, min_side: int, max_bytes: int) -> None:
    os._exit(3)  # what a decoder segfault looks like to the pool


def test_a_crashing_worker_is_a_clear_error_not_a_hang(
    tmp_path: Path, pets_sample: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloud.data.ingest as ingest_mod

    lake = make_lake(pets_sample, tmp_path / "lake", per_label=40)
    monkeypatch.setattr(ingest_mod, "check_file", _crash)
    with pytest.raises(IngestError, match="worker died"):
        run(lake, reg, tmp_path, workers=2)
    assert reg.list_datasets() == []


def test_the_same_data_from_another_folder_keeps_the_first_source(
    lake: Path, reg: Registry, tmp_path: Path
) -> None:
    """Re-ingesting a copy repointed the dataset at the copy; training then failed once the copy
    was gone and lineage named the wrong folder. The first source stays; the copy is recorded."""
    first = run(lake, reg, tmp_path)
    copy = tmp_path / "copy-of-lake"
    shutil.copytree(lake, copy)
    again = run(copy, reg, tmp_path)
    assert again["dataset_version"] == first["dataset_version"] and again["new"] is False
    assert again["kept_source"] == str(lake.resolve())
    assert again["sources"] == [str(lake.resolve()), str(copy.resolve())]
    assert reg.get_dataset(first["dataset_version"]).source == str(lake.resolve())
    shutil.rmtree(copy)  # the copy goes away: the version still points at files that exist
    ds = reg.get_dataset(first["dataset_version"])
    assert all((Path(ds.source) / f.path).is_file() for f in reg.dataset_files(ds.id))
    entry = reg.audit.entries(subject=f"dataset:{ds.id}")[-1]
    assert entry.action == "dataset.reingested" and entry.details["kept_source"] == str(lake.resolve())
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    res = CliRunner().invoke(cloud, ["datasets", "show", ds.id[:12], "--config", str(toml)])
    assert res.exit_code == 0 and f"also from  {copy.resolve()}" in res.output, res.output


def test_symlinked_label_folders_and_a_none_label_are_a_lake(
    tmp_path: Path, reg: Registry, pets_sample: Path
) -> None:
    """A lake composed without copying: cat/ and dog/ link to one collection, none/ to another."""
    src = make_lake(pets_sample, tmp_path / "pets", per_label=20)
    nopet = tmp_path / "nopet" / "none"
    nopet.mkdir(parents=True)
    for f in sorted((pets_sample.parent / "nopet-dev" / "none").glob("*.JPEG"))[:20]:
        shutil.copy(f, nopet / f.name)
    lake = tmp_path / "lake"
    lake.mkdir()
    for label, target in (("cat", src / "cat"), ("dog", src / "dog"), ("none", nopet)):
        (lake / label).symlink_to(target, target_is_directory=True)
    res = run(lake, reg, tmp_path)
    assert res["labels"] == ["cat", "dog", "none"]
    assert res["counts"]["total"] == {"cat": 20, "dog": 20, "none": 20}
    assert res["quarantined"] == []
    files = reg.dataset_files(res["dataset_version"], "train") + reg.dataset_files(
        res["dataset_version"], "test"
    )
    assert {f.path.split("/")[0] for f in files} == {"cat", "dog", "none"}
    assert all((lake / f.path).is_file() for f in files)  # paths resolve through the links
