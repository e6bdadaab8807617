"""The promotion gate: pure comparison of metrics against the cloud config's ``[gate]`` section."""

from __future__ import annotations

from typing import Any

from cloud.evaluation.config import GateConfig

# gate key -> (figure in metrics["perception"], at least (True) or at most (False))
PERCEPTION_KEYS = {
    "min_closeup_pets_right": ("closeup_pets_right", True),
    "min_none_rejection": ("closeup_none_rejected", True),
    "min_rejection_auroc": ("rejection_auroc", True),
    "max_rejection_fpr_at_95_tpr": ("rejection_fpr_at_95_tpr", False),
    "min_scene_accuracy": ("scene_pets_right", True),
    "min_grey_scene_accuracy": ("grey_scene_pets_right", True),
    "min_empty_scene_rejection": ("empty_scenes_rejected", True),
}


def check_gate(metrics: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """Failures of ``metrics`` against ``gate``.

    Accuracy, per-class recall and the recall gap judge what a box will publish: for a model
    with rejection, its outcomes on the test images (``metrics["decisions"]``: ``none`` by pet
    evidence, abstains counted as wrong), not the head's argmax, which the box never takes for
    such a model. ECE stays on the probabilities, whose confidences the box reports.
    """
    failures: list[str] = []
    decisions = metrics.get("decisions")
    basis = decisions or metrics
    on = " (box decisions)" if decisions else ""
    if basis["accuracy"] < gate.min_accuracy:
        failures.append(f"accuracy{on} {basis['accuracy']:.4f} < {gate.min_accuracy}")
    for label, pc in basis["per_class"].items():
        if pc["recall"] < gate.min_recall_per_class:
            failures.append(f"recall of {label}{on} {pc['recall']:.4f} < {gate.min_recall_per_class}")
    if basis["recall_gap"] > gate.max_recall_gap:
        failures.append(f"recall gap{on} {basis['recall_gap']:.4f} > {gate.max_recall_gap}")
    if metrics["ece"] > gate.max_ece:
        failures.append(f"ECE {metrics['ece']:.4f} > {gate.max_ece}")
    perception = metrics.get("perception") or {}
    for key, (figure, at_least) in PERCEPTION_KEYS.items():
        want = getattr(gate, key)
        if want is None:
            continue
        got = perception.get(figure)
        if got is None:
            failures.append(
                f"{figure} is required by gate.{key} but was not measured (it needs a model with "
                "rejection and none photos in the test split)"
            )
        elif (got < want) if at_least else (got > want):
            failures.append(f"{figure} {got:.4f} {'<' if at_least else '>'} {want}")
    return {
        "passed": not failures,
        "failures": failures,
        "thresholds": gate.model_dump(),
        "basis": "box decisions" if decisions else "probabilities",
    }


GATE_METRICS = ("accuracy", "per_class", "recall_gap", "ece")


def recheck_gate(metrics: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """The stored metrics against ``gate`` (the serving config's, at approval time): the trainer's
    own ``[gate]`` may have been looser. Metrics without every gated figure cannot pass: an
    unmeasured model is not a measured good one."""
    missing = [k for k in GATE_METRICS if k not in metrics]
    if missing:
        return {
            "passed": False,
            "failures": [f"no stored {', '.join(missing)}: evaluate the model first"],
            "thresholds": gate.model_dump(),
            "missing": missing,
        }
    return check_gate(metrics, gate)
