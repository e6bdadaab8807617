"""Model packages: ONNX metadata, dynamic batch, parity, golden samples, manifest, tarball, atomicity."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cloud.packaging import export
from cloud.packaging.errors import PackagingError
from cloud.packaging.package import deterministic_tarball
from cloud.training.untrained import build_baseline, default_golden_images
from edge.preprocess import Preprocessor, load_image
from shared.modelpkg import DigestMismatch, parse_metadata, read_golden, verify_package


def test_baseline_package_is_complete_and_verifies(baseline_package: Path) -> None:
    manifest = verify_package(baseline_package)
    assert manifest.model_version == "baseline-imagenet-grouped"
    for rel in ("model.onnx", "golden/golden.json", "lineage.json", "model_card.md"):
        assert rel in manifest.files
    proto = onnx.load(str(baseline_package / "model.onnx"))
    meta = parse_metadata({p.key: p.value for p in proto.metadata_props})
    assert meta.labels == ("cat", "dog") and meta.model_version == "baseline-imagenet-grouped"
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    lineage = json.loads((baseline_package / "lineage.json").read_text())
    assert lineage["parity"]["max_abs_diff"] <= 1e-4
    assert {"commit", "dirty"} <= set(lineage["code"])
    assert lineage["packages"]["torch"] and lineage["host"]["hostname"]


def test_golden_samples_reproduce_with_edge_preprocessing(baseline_package: Path) -> None:
    golden = read_golden(baseline_package)
    assert len(golden.samples) >= 8
    proto = onnx.load(str(baseline_package / "model.onnx"))
    meta = parse_metadata({p.key: p.value for p in proto.metadata_props})
    sess = ort.InferenceSession(str(baseline_package / "model.onnx"), providers=["CPUExecutionProvider"])
    frames = [load_image(baseline_package / "golden" / s.file) for s in golden.samples]
    probs = sess.run(None, {sess.get_inputs()[0].name: Preprocessor(meta.preprocess)(frames)})[0]
    expected = np.array([s.probs for s in golden.samples])
    assert probs.shape == (len(frames), 2)  # dynamic batch: 8 at once
    assert np.abs(probs - expected).max() <= golden.tolerance
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # softmax is inside the graph
    correct = sum(
        meta.labels[int(np.argmax(p))] == s.label for p, s in zip(probs, golden.samples, strict=True)
    )
    assert correct >= 6  # the untrained baseline is right on most of them


def test_tarball_matches_the_folder_and_is_reproducible(baseline_package: Path, tmp_path: Path) -> None:
    tarball = baseline_package.parent / f"{baseline_package.name}.tar.gz"
    out = tmp_path / "x"
    with tarfile.open(tarball) as tar:
        tar.extractall(out, filter="data")
    verify_package(out)
    assert (
        deterministic_tarball(baseline_package, tmp_path / "again.tar.gz")
        == hashlib.sha256(tarball.read_bytes()).hexdigest()
    )


def test_a_tampered_package_fails_verification(baseline_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(baseline_package, copy)
    (copy / "model_card.md").write_text("approved by nobody")
    with pytest.raises(DigestMismatch):
        verify_package(copy)


def test_versions_are_immutable_and_interrupted_builds_leave_nothing(
    tmp_path: Path, pets_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = default_golden_images(pets_sample)

    def boom(*a: object, **k: object) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "parity", boom)
    with pytest.raises(KeyboardInterrupt):
        build_baseline(tmp_path / "models", "v-interrupted", images)
    assert list((tmp_path / "models").iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "models" / "v-taken").mkdir()
    with pytest.raises(PackagingError, match="immutable"):
        build_baseline(tmp_path / "models", "v-taken", images)


def test_too_few_golden_samples_is_refused(tmp_path: Path, pets_sample: Path) -> None:
    with pytest.raises(PackagingError, match="at least 8 golden"):
        build_baseline(tmp_path / "models", "v-few", default_golden_images(pets_sample)[:5])
    assert [p.name for p in (tmp_path / "models").iterdir()] == []
