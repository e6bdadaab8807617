"""Test-step metrics, the promotion gate and the HTML report (pure functions, known answers)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cloud.evaluation.config import GateConfig
from cloud.evaluation.gate import check_gate
from cloud.evaluation.metrics import auc, decision_metrics, ece, evaluate, roc_curve
from cloud.evaluation.report import render_html

LABELS = ["cat", "dog"]


def test_metrics_on_a_hand_checked_example() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p_dog = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.9, 0.7, 0.6, 0.4, 0.95])
    probs = np.stack([1 - p_dog, p_dog], axis=1)
    m = evaluate(y, probs, LABELS)
    assert m["confusion_matrix"] == [[3, 1], [1, 5]]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    )
    assert m["per_class"]["dog"]["recall"] == pytest.approx(5 / 6)
    assert m["recall_gap"] == pytest.approx(5 / 6 - 0.75)
    # AUC by counting: pairs (dog, cat) where the dog scores higher, over 6*4 pairs.
    pairs = sum((d > c) + 0.5 * (d == c) for d in p_dog[y == 1] for c in p_dog[y == 0])
    assert m["roc_auc"] == pytest.approx(pairs / 24)
    assert m["baseline"]["prediction_mix"] == {"cat": 0.4, "dog": 0.6}
    assert sum(m["baseline"]["confidence_hist"]["counts"]) == 10


def test_roc_of_a_perfect_and_a_useless_scorer() -> None:
    y = np.array([True, True, False, False])
    assert auc(*roc_curve(y, np.array([0.9, 0.8, 0.2, 0.1]))) == pytest.approx(1.0)
    assert auc(*roc_curve(y, np.array([0.5, 0.5, 0.5, 0.5]))) == pytest.approx(0.5)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    conf = np.full(10, 0.75)
    correct = np.array([True] * 7 + [False] * 3)
    value, bins = ece(conf, correct)
    assert value == pytest.approx(0.05) and bins[0]["n"] == 10
    value, _ = ece(np.full(10, 0.99), np.array([True] * 5 + [False] * 5))
    assert value == pytest.approx(0.49)


def test_gate_lists_every_failure() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.1, 0.9]])
    m = evaluate(y, probs, LABELS)
    g = check_gate(m, GateConfig())
    assert not g["passed"]
    assert any("accuracy" in f for f in g["failures"]) and any("recall of cat" in f for f in g["failures"])
    assert any("recall gap" in f for f in g["failures"])
    assert check_gate(
        m, GateConfig(min_accuracy=0.7, min_recall_per_class=0.5, max_recall_gap=0.6, max_ece=1.0)
    )["passed"]


def test_html_report_has_three_inline_svg_plots() -> None:
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    m = evaluate(y, probs, LABELS)
    page = render_html("v<1>", m, check_gate(m, GateConfig()), {"dataset_version": "abc"})
    assert len(re.findall(r"<svg ", page)) == 3
    assert "Confusion matrix" in page and "ROC curve" in page and "Reliability" in page
    assert "v&lt;1&gt;" in page and "<script" not in page


def test_decision_metrics_count_abstains_as_wrong_and_none_as_a_class() -> None:
    labels = ["cat", "dog", "none"]
    truth = ["cat", "cat", "dog", "dog", "none", "none", "none", "none"]
    said = ["cat", "abstain", "dog", "none", "none", "none", "dog", "abstain"]
    d = decision_metrics(truth, said, labels)
    assert d["columns"] == ["cat", "dog", "none", "abstain"]
    assert d["confusion_matrix"] == [[1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 2, 1]]
    assert d["accuracy"] == pytest.approx(4 / 8)
    assert d["abstained"] == pytest.approx(2 / 8)
    assert d["per_class"]["none"]["recall"] == pytest.approx(0.5)
    assert d["per_class"]["none"]["precision"] == pytest.approx(2 / 3)
    assert d["per_class"]["dog"]["precision"] == pytest.approx(0.5)
    assert d["recall_gap"] == pytest.approx(0.0)
    # a cat/dog model that rejects: the box's "none" is a column of its own, never right
    d2 = decision_metrics(["cat", "dog"], ["none", "dog"], ["cat", "dog"])
    assert d2["columns"] == ["cat", "dog", "none", "abstain"] and d2["accuracy"] == 0.5
    with pytest.raises(ValueError, match="one decision per test image"):
        decision_metrics(["cat"], [], ["cat", "dog"])


def test_the_gate_judges_a_rejecting_model_on_the_box_decisions_not_the_argmax() -> None:
    """The head's argmax calls 2 of 10 none photos "dog" (recall 0.8, gate fails on it), but the
    box's pet evidence rejects them: the gate must judge what the box publishes, both ways."""
    labels = ["cat", "dog", "none"]
    y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    probs = np.array(
        [[0.98, 0.01, 0.01]] * 10
        + [[0.01, 0.98, 0.01]] * 10
        + [[0.01, 0.98, 0.01]] * 2
        + [[0.01, 0.01, 0.98]] * 8
    )
    m = evaluate(y, probs, labels)
    loose_ece = GateConfig(max_ece=1.0)
    assert not check_gate(m, loose_ece)["passed"]
    truth = [labels[i] for i in y]
    m["decisions"] = decision_metrics(truth, truth, labels)
    g = check_gate(m, loose_ece)
    assert g["passed"] and g["basis"] == "box decisions"
    # and the other way: the argmax is perfect on cats, the box abstains on 3 of them
    m2 = evaluate(y, np.eye(3)[y] * 0.97 + 0.01, labels)
    assert check_gate(m2, loose_ece)["passed"]
    m2["decisions"] = decision_metrics(truth, ["abstain"] * 3 + truth[3:], labels)
    g2 = check_gate(m2, loose_ece)
    assert not g2["passed"]
    assert "recall of cat (box decisions) 0.7000 < 0.95" in g2["failures"]
    page = render_html("v1", m2, g2, {})
    assert "What the box says about the test images" in page and "<th>abstain</th>" in page
