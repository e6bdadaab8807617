"""The model card: the page a QA approver reads before moving a version towards production."""

from __future__ import annotations

import json
from typing import Any

from cloud.packaging.lineage import ModelLineage
from shared.modelpkg import ModelMetadata


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(
    meta: ModelMetadata,
    lineage: dict[str, Any],
    metrics: dict[str, Any] | None,
    gate: dict[str, Any] | None,
    description: str,
) -> str:
    recorded = ModelLineage.read(lineage)
    lines = [
        f"# Model card: {meta.model_version}",
        "",
        description,
        "",
        "## Intended use",
        "Classify still frames from the pet park's CCTV cameras as one of "
        f"{', '.join(meta.labels)}. Not for people, other animals, or safety decisions; the edge abstains "
        "below its confidence threshold.",
        "",
        "## Inputs and outputs",
        f"- Input `input`: float32 batch, layout {meta.preprocess.layout}, "
        f"{meta.preprocess.input_size[0]}x{meta.preprocess.input_size[1]}, colour {meta.preprocess.colour}.",
        "- Preprocessing (also in ONNX metadata `parkwatch.preprocess`): "
        f"`{meta.preprocess.model_dump_json()}`",
        f"- Output `probabilities`: softmax over labels {json.dumps(list(meta.labels))}.",
        "",
        "## Data",
        f"- Dataset version: `{recorded.dataset_version}`",
    ]
    if recorded.dataset_counts:
        lines.append(f"- Counts: `{json.dumps(recorded.dataset_counts, sort_keys=True)}`")
    lines += ["", "## Evaluation (held-out test split)"]
    if metrics:
        lines.append("| metric | value |")
        lines.append("|---|---|")
        for k in ("accuracy", "roc_auc", "ece", "recall_gap", "n"):
            if k in metrics:
                lines.append(f"| {k} | {_fmt(metrics[k])} |")
        for label, pc in metrics.get("per_class", {}).items():
            lines.append(
                f"| {label} precision / recall / F1 | {_fmt(pc['precision'])} / {_fmt(pc['recall'])} / "
                f"{_fmt(pc['f1'])} |"
            )
    else:
        lines.append("Not evaluated on a dataset version (see description).")
    if gate is not None:
        verdict = "PASSED" if gate.get("passed") else "FAILED"
        lines += [
            "",
            f"## Promotion gate: {verdict}",
            f"Thresholds: `{json.dumps(gate.get('thresholds', {}))}`",
        ]
        lines += [f"- {f}" for f in gate.get("failures", [])]
    lines += [
        "",
        "## Lineage",
        f"- Code commit: `{recorded.commit}` (dirty: {recorded.dirty})",
        f"- Parameters: `{json.dumps(recorded.parameters or {}, sort_keys=True)}`",
        f"- Export parity (max abs diff vs torch): {(recorded.parity or {}).get('max_abs_diff')}",
        f"- Packages: `{json.dumps(recorded.packages, sort_keys=True)}`",
        f"- Host: `{json.dumps(recorded.host or {}, sort_keys=True)}`",
        "",
        "## Limitations",
        "Trained on a small park sample; accuracy drops on night IR frames, heavy occlusion and other "
        "species. Monitor drift against the test-set baseline in `evaluation.json`.",
        "",
    ]
    return "\n".join(lines)
