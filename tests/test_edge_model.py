"""Model loading through real ONNX Runtime sessions, metadata refusal and the model slot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.config import InferenceConfig
from edge.errors import ModelLoadError, ModelMetadataError
from edge.model import ModelSlot, load_model
from tests.edge_fixtures import make_tiny_onnx, make_tiny_package


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def test_loads_package_with_metadata_and_runs_a_batch(tmp_path: Path) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", version="v7")
    m = load_model(pkg, InferenceConfig(threads=1))
    assert m.version == "v7"
    assert m.labels == ("cat", "dog")
    assert m.max_batch is None  # dynamic batch
    assert "manifest digests ok" in m.verification
    probs = m.classify(frames(3))
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # The same numbers as a raw session fed by the shared preprocessing.
    raw = m.session.run(None, {m.input_name: m.preprocessor(frames(3))})[0]
    np.testing.assert_allclose(probs, raw, rtol=1e-6)


def test_bare_onnx_is_loaded_but_marked_unverified(tmp_path: Path) -> None:
    m = load_model(make_tiny_onnx(tmp_path / "m.onnx"))
    assert "unverified" in m.verification


def test_model_without_metadata_is_refused_with_a_typed_error(tmp_path: Path) -> None:
    path = make_tiny_onnx(tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ModelMetadataError, match=r"parkwatch\.labels"):
        load_model(path)


def test_tampered_package_is_refused(tmp_path: Path) -> None:
    pkg = make_tiny_package(tmp_path / "pkg")
    man = json.loads((pkg / "manifest.json").read_text())
    man["files"]["model.onnx"]["size"] += 1
    (pkg / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelLoadError, match="manifest"):
        load_model(pkg)


def test_missing_path_and_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model"):
        load_model(tmp_path / "nope")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        load_model(junk)


def test_unavailable_provider_falls_back_to_cpu(tmp_path: Path) -> None:
    cfg = InferenceConfig(providers=["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    m = load_model(make_tiny_onnx(tmp_path / "m.onnx"), cfg)
    assert m.providers == ["CPUExecutionProvider"]
    assert m.classify(frames(1)).shape == (1, 2)


def test_slot_swaps_keeps_previous_and_rolls_back(tmp_path: Path) -> None:
    a = load_model(make_tiny_onnx(tmp_path / "a.onnx", version="a"))
    b = load_model(make_tiny_onnx(tmp_path / "b.onnx", version="b", seed=3))
    slot = ModelSlot()
    assert slot.current is None
    with pytest.raises(ModelLoadError):
        slot.rollback()
    assert slot.swap(a) is None
    assert slot.swap(b) is a
    assert slot.current is b and slot.previous is a
    assert slot.rollback() is a
    assert slot.current is a and slot.previous is b
