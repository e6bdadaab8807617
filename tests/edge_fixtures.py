"""Helpers for the edge tests: a tiny but real ONNX model with parkwatch metadata, and configs.

The tiny model (global average pool → linear → softmax) is run by the real ONNX Runtime; it is
used until/besides the baseline EfficientNet package so edge tests stay fast on 2 cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import EdgeConfig
from shared.atomic import atomic_write_text
from shared.broker import EmbeddedBroker
from shared.modelpkg import MANIFEST_FILE, ModelMetadata, PreprocessSpec, build_manifest

DEFAULT_SPEC = PreprocessSpec(input_size=(64, 64), resize="stretch", crop="none")


def make_tiny_onnx(
    path: Path,
    version: str = "tiny-1",
    labels: tuple[str, ...] = ("cat", "dog"),
    with_metadata: bool = True,
    spec: PreprocessSpec = DEFAULT_SPEC,
    seed: int = 0,
    weight: Any = None,
    bias: Any = None,
    rejection: Any = None,
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = spec.input_size
    rng = np.random.default_rng(seed)
    if weight is None:
        weight = rng.normal(0, 3, size=(3, len(labels)))
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(np.zeros(len(labels)) if bias is None else bias, dtype=np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(labels)])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        meta = ModelMetadata(labels=labels, preprocess=spec, model_version=version, rejection=rejection)
        for k, v in meta.to_props().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def colour_model_args(gain: float = 8.0, none_bias: float = 3.0) -> dict[str, Any]:
    """A tiny model that sees colour: mostly red = cat, mostly blue = dog, grey = none.

    Logits from the pooled normalised channels (R, G, B): cat = gain*(R - G), dog = gain*(B - G),
    none = ``none_bias``, each measured against mid-grey, so a grey scene is a sure ``none`` and a
    region mostly covered by a red (blue) patch a sure cat (dog). It lets tests put a "pet" at a
    known place in a wide frame and check the box that comes back.
    """
    spec = DEFAULT_SPEC
    grey = [(0.5 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    w = np.array([[gain, 0.0, 0.0], [-gain, -gain, 0.0], [0.0, gain, 0.0]])  # rows R, G, B
    b = np.array([-gain * (grey[0] - grey[1]), -gain * (grey[2] - grey[1]), none_bias])
    from shared.modelpkg import RejectionSpec

    rej = RejectionSpec(none_label="none", threshold=0.5, region_threshold=0.5, chosen_on="default")
    return {"labels": ("cat", "dog", "none"), "weight": w, "bias": b, "rejection": rej}


def make_tiny_package(folder: Path, version: str = "tiny-1", **kw: Any) -> Path:
    make_tiny_onnx(folder / "model.onnx", version=version, **kw)
    manifest = build_manifest(folder, version)
    atomic_write_text(folder / MANIFEST_FILE, manifest.model_dump_json(indent=2))
    return folder


def edge_config(
    tmp_path: Path,
    broker: EmbeddedBroker | None = None,
    cameras: Iterable[dict[str, Any]] = (),
    model: Path | None = None,
    **sections: dict[str, Any],
) -> EdgeConfig:
    data: dict[str, Any] = {
        "device": {"id": "box1", "site": "bcn"},
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": broker.port if broker else 1, "keepalive": 5},
        "cameras": list(cameras),
        "telemetry": {"interval_s": 1.0},
        "status_page": {"enabled": False},
        "updater": {"enabled": False},
    }
    if model is not None:
        data["model"] = {"initial": str(model)}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return EdgeConfig.model_validate(data)


def write_toml(path: Path, cfg: EdgeConfig) -> Path:
    """Write ``cfg`` as TOML (for subprocess daemons); only the types our configs use."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(str(v))

    data = cfg.model_dump(mode="json", exclude_none=True)
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            continue
        else:
            lines.append(f"{k} = {val(v)}")

    def emit_table(name: str, d: dict[str, Any]) -> None:
        lines.append(f"\n[{name}]")
        subs = []
        for k, v in d.items():
            if isinstance(v, dict):
                subs.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {val(v)}")
        for n, s in subs:
            emit_table(n, s)

    for name, d in tables:
        emit_table(name, d)
    for cam in data.get("cameras", []):
        lines.append("\n[[cameras]]")
        lines.extend(f"{k} = {val(v)}" for k, v in cam.items())
    path.write_text("\n".join(lines) + "\n")
    return path
