"""Run a packaged ONNX model over test images exactly as a device would, and score it.

The reported metrics come from ONNX Runtime on the exported file with ``edge.preprocess`` (not
from the torch model), so what the registry says is what the fleet will see, and a plain
onnxruntime script reading only the file's metadata reproduces the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from cloud.evaluation.config import EvaluationConfig, GateConfig
from cloud.evaluation.gate import check_gate
from cloud.evaluation.metrics import decision_metrics, evaluate
from cloud.evaluation.report import render_html
from edge.preprocess import Preprocessor, load_image
from shared.errors import ParkwatchError
from shared.modelpkg import ModelMetadata, PackageError, parse_metadata

F32 = npt.NDArray[np.float32]


class EvaluationError(ParkwatchError):
    """A model cannot be evaluated on the given data (labels differ, files missing...)."""


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    gate: dict[str, Any]
    html: str
    predictions: list[dict[str, Any]]


def read_metadata(onnx_path: Path) -> ModelMetadata:
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise EvaluationError(f"{onnx_path}: not a readable ONNX file: {e}") from e
    return parse_metadata({p.key: p.value for p in proto.metadata_props}, str(onnx_path))


def onnx_probs(
    onnx_path: Path,
    paths: Sequence[Path],
    meta: ModelMetadata,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> F32:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pre = Preprocessor(meta.preprocess)
    chunks = [list(paths[i : i + batch]) for i in range(0, len(paths), batch)]
    out: list[F32] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for x in pool.map(lambda ch: pre([load_image(p) for p in ch]), chunks):
            out.append(np.asarray(sess.run(None, {name: x})[0], dtype=np.float32))
            if progress:
                progress(len(x))
    return np.concatenate(out) if out else np.zeros((0, len(meta.labels)), np.float32)


def evaluate_onnx(
    onnx_path: Path,
    items: Sequence[tuple[Path, str]],
    gate_cfg: GateConfig,
    context: dict[str, Any],
    progress: Callable[[int], None] | None = None,
    eval_cfg: EvaluationConfig | None = None,
) -> Evaluation:
    """Score ``onnx_path`` on ``items`` (image path, true label) and render the report."""
    try:
        meta = read_metadata(onnx_path)
    except PackageError as e:
        raise EvaluationError(str(e)) from e
    labels = list(meta.labels)
    unknown = sorted({lab for _, lab in items} - set(labels))
    if unknown:
        raise EvaluationError(
            f"test labels {unknown} are not among the model's labels {labels}; "
            "evaluate on a dataset with the same labels"
        )
    if not items:
        raise EvaluationError("no test images to evaluate on")
    probs = onnx_probs(onnx_path, [p for p, _ in items], meta, progress=progress)
    y = np.array([labels.index(lab) for _, lab in items], dtype=np.int64)
    metrics = evaluate(y, probs, labels)
    if eval_cfg is not None:
        from cloud.evaluation.perception import evaluate_perception

        perception = evaluate_perception(onnx_path, items, eval_cfg)
        if perception is not None:
            metrics["perception"] = perception.figures
            metrics["decisions"] = decision_metrics([lab for _, lab in items], perception.decisions, labels)
    gate = check_gate(metrics, gate_cfg)
    html = render_html(meta.model_version, metrics, gate, context)
    preds = [
        {"path": str(p), "label": lab, "probs": [round(float(v), 6) for v in row]}
        for (p, lab), row in zip(items, probs, strict=True)
    ]
    return Evaluation(metrics, gate, html, preds)
