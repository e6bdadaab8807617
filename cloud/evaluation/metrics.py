"""Test-split metrics from labels and predicted probabilities. Pure numpy, no I/O.

Also produces the *baseline* the fleet's drift analysis compares live predictions against:
the prediction mix and confidence histogram of this model on its own test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.floating[Any]]
I64 = npt.NDArray[np.int64]
ECE_BINS = 15
CONF_BINS = 20


def confusion(y: I64, pred: I64, n: int) -> I64:
    """Rows are true labels, columns predicted labels."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def roc_curve(y_pos: npt.NDArray[np.bool_], score: F32) -> tuple[F32, F32]:
    """False- and true-positive rates at every distinct threshold (ties handled as one step)."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y_pos[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(t)[distinct]
    fps = (1 + distinct) - tps
    p, n = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    return np.r_[0.0, fps / n], np.r_[0.0, tps / p]


def auc(fpr: F32, tpr: F32) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def ece(
    conf: F32, correct: npt.NDArray[np.bool_], bins: int = ECE_BINS
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error over equal-width confidence bins, plus the bins for the diagram."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total, table = 0.0, []
    for b in range(bins):
        mask = idx == b
        k = int(mask.sum())
        if k:
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            total += k / len(conf) * abs(acc - mean_conf)
            table.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "n": k,
                    "accuracy": acc,
                    "confidence": mean_conf,
                }
            )
    return float(total), table


def per_class_figures(cm: I64, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per label from a confusion matrix whose rows are the
    labels and whose first columns are the same labels (more columns: outcomes that are never
    right, such as ``abstain``)."""
    out: dict[str, dict[str, float]] = {}
    for i, lab in enumerate(labels):
        tp, support, called = cm[i, i], cm[i, :].sum(), cm[:, i].sum()
        prec = tp / called if called else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[lab] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(support)}
    return out


def evaluate(y: Sequence[int] | I64, probs: F32, labels: Sequence[str]) -> dict[str, Any]:
    """Everything the report, the gate and drift analysis need, JSON-ready."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    if len(y) == 0:
        raise ValueError("no test samples to evaluate")
    pred = probs.argmax(axis=1)
    cm = confusion(y, pred, n)
    per_class = per_class_figures(cm, labels)
    rocs: dict[str, dict[str, list[float]]] = {}
    aucs = []
    for i, lab in enumerate(labels):
        pos = y == i
        if pos.all() or not pos.any():
            continue
        fpr, tpr = roc_curve(pos, probs[:, i])
        rocs[lab] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        aucs.append(auc(fpr, tpr))
        if n == 2:
            break  # one curve describes a binary problem; the positive class is labels[0]
    conf = probs.max(axis=1)
    correct = pred == y
    ece_value, reliability = ece(conf, correct)
    recalls = [pc["recall"] for pc in per_class.values()]
    hist, _ = np.histogram(conf, bins=CONF_BINS, range=(0.0, 1.0))
    return {
        "n": len(y),
        "accuracy": float(correct.mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "roc_auc": float(np.mean(aucs)) if aucs else None,
        "roc": rocs,
        "ece": ece_value,
        "reliability": reliability,
        "recall_gap": float(max(recalls) - min(recalls)),
        "baseline": {
            "prediction_mix": {lab: float((pred == i).mean()) for i, lab in enumerate(labels)},
            "label_mix": {lab: float((y == i).mean()) for i, lab in enumerate(labels)},
            "confidence_hist": {"bins": CONF_BINS, "range": [0.0, 1.0], "counts": hist.tolist()},
            "mean_confidence": float(conf.mean()),
        },
    }


ABSTAIN = "abstain"


def decision_metrics(truth: Sequence[str], decided: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall and recall gap of what a box *says* (one outcome per
    test image: a label, ``none`` or ``abstain``), not of the probabilities' argmax.

    Why both: with rejection the box does not take the head's argmax. A ``none`` photo the head
    calls "dog" by a little is still ``none`` on the box when its pet evidence is below the
    threshold, and a pet the head is sure of may be abstained. The gate judges a rejecting model
    on these outcomes, because they are what the fleet will publish. An abstain is never right.
    """
    if len(truth) != len(decided):
        raise ValueError("one decision per test image is needed")
    if not truth:
        raise ValueError("no test samples to evaluate")
    columns = list(labels) + [c for c in sorted(set(decided) - set(labels)) if c != ABSTAIN] + [ABSTAIN]
    col = {c: i for i, c in enumerate(columns)}
    cm = np.zeros((len(labels), len(columns)), dtype=np.int64)
    for t, d in zip(truth, decided, strict=True):
        cm[labels.index(t), col[d]] += 1
    per_class = per_class_figures(cm, labels)
    recalls = [pc["recall"] for pc in per_class.values() if pc["support"]]
    n = len(truth)
    return {
        "n": n,
        "accuracy": float(np.trace(cm[:, : len(labels)]) / n),
        "per_class": per_class,
        "recall_gap": float(max(recalls) - min(recalls)) if recalls else 0.0,
        "abstained": float(cm[:, col[ABSTAIN]].sum() / n),
        "confusion_matrix": cm.tolist(),
        "columns": columns,
    }


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers stored in the registry row (the full report lives in the package)."""
    return {
        "accuracy": m["accuracy"],
        "roc_auc": m["roc_auc"],
        "ece": m["ece"],
        "recall_gap": m["recall_gap"],
        "n": m["n"],
        "per_class": m["per_class"],
        "confusion_matrix": m["confusion_matrix"],
        **({"perception": m["perception"]} if m.get("perception") else {}),
        **({"decisions": m["decisions"]} if m.get("decisions") else {}),
    }


def rejection_roc(pos: F32, neg: F32) -> dict[str, float]:
    """AUROC of a pet score (pets positive, no-pet photos negative) and the false-positive rate
    at 95 % true-positive rate: the share of no-pet photos let through when 95 % of pets are."""
    y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    s = np.r_[np.asarray(pos, np.float64), np.asarray(neg, np.float64)]
    fpr, tpr = roc_curve(y, s)
    k = int(np.searchsorted(tpr, 0.95, side="left"))
    return {"auroc": auc(fpr, tpr), "fpr_at_95_tpr": float(fpr[min(k, len(fpr) - 1)])}
