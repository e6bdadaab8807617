"""``parkwatch cloud evaluate VERSION``: re-score a registered model on a dataset's test split.

The package itself is immutable (its manifest covers the evaluation stored at packaging time),
so a re-evaluation is written beside it under ``reports/<version>/<dataset>/``. It never changes
the registry's gate verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from cloud.evaluation.runner import EvaluationError, evaluate_onnx
from cloud.registry.store import Registry
from shared.atomic import atomic_write_json, atomic_write_text
from shared.modelpkg import MODEL_FILE, verify_package


def evaluate_version(
    cfg: CloudConfig, reg: Registry, version: str, dataset_id: str | None = None, show_progress: bool = False
) -> dict[str, Any]:
    model = reg.get_model(version)
    pkg = Path(model.package_dir)
    verify_package(pkg)  # refuse to score a package whose files no longer match its manifest
    ds_id = dataset_id or model.dataset_id
    if not ds_id:
        raise EvaluationError(f"model {version} was not trained on a registered dataset; pass --dataset ID")
    ds = reg.get_dataset(ds_id)
    items = [(Path(ds.source) / f.path, f.label) for f in reg.dataset_files(ds.id, "test")]
    missing = [str(p) for p, _ in items if not p.is_file()]
    if missing:
        raise EvaluationError(
            f"{len(missing)} test file(s) are gone from the lake (first: {missing[0]}); "
            "re-ingest and evaluate on the new dataset version"
        )
    ev = evaluate_onnx(
        pkg / MODEL_FILE,
        items,
        cfg.gate,
        {"dataset_version": ds.id, "split": "test", "re_evaluation": True},
        eval_cfg=cfg.evaluation,
    )
    out_dir = cfg.paths.reports_dir / version / ds.id[:16]
    out = {
        "model_version": version,
        "dataset_version": ds.id,
        "split": "test",
        "metrics": ev.metrics,
        "gate": ev.gate,
        "registry_gate_passed": model.gate_passed,
    }
    atomic_write_json(out_dir / "evaluation.json", {**out, "predictions": ev.predictions})
    atomic_write_text(out_dir / "evaluation.html", ev.html)
    out["report_json"] = str(out_dir / "evaluation.json")
    out["report_html"] = str(out_dir / "evaluation.html")
    return out
