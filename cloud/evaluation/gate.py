"""The promotion gate: pure comparison of metrics against the cloud config's ``[gate]`` section."""

from __future__ import annotations

from typing import Any

from cloud.evaluation.config import GateConfig


def check_gate(metrics: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    failures: list[str] = []
    if metrics["accuracy"] < gate.min_accuracy:
        failures.append(f"accuracy {metrics['accuracy']:.4f} < {gate.min_accuracy}")
    for label, pc in metrics["per_class"].items():
        if pc["recall"] < gate.min_recall_per_class:
            failures.append(f"recall of {label} {pc['recall']:.4f} < {gate.min_recall_per_class}")
    if metrics["recall_gap"] > gate.max_recall_gap:
        failures.append(f"recall gap {metrics['recall_gap']:.4f} > {gate.max_recall_gap}")
    if metrics["ece"] > gate.max_ece:
        failures.append(f"ECE {metrics['ece']:.4f} > {gate.max_ece}")
    return {"passed": not failures, "failures": failures, "thresholds": gate.model_dump()}


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
