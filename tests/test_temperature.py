"""Temperature scaling: the trained head's confidences are calibrated on the validation carve-out."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
from torch import nn

from cloud.training.head import apply_temperature, fit_temperature, logits, predict_proba


def _ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    out = 0.0
    for lo, hi in pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(out)


def test_an_overconfident_head_is_cooled_and_its_predictions_stay() -> None:
    rng = np.random.default_rng(0)
    n, d = 4000, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, 3)).astype(np.float32)
    true_logits = x @ w
    y = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in true_logits], dtype=np.int64)
    lin = nn.Linear(d, 3)
    head = nn.Sequential(lin)
    with torch.no_grad():  # the right direction, four times too sure
        lin.weight.copy_(torch.from_numpy(4 * w.T))
        lin.bias.zero_()
    before = predict_proba(head, x)
    t = fit_temperature(logits(head, x), y)
    assert 3.0 < t < 5.5, t
    apply_temperature(head, t)
    after = predict_proba(head, x)
    assert (after.argmax(1) == before.argmax(1)).all()
    assert _ece(after, y) < _ece(before, y) / 2


def test_a_calibrated_head_keeps_a_temperature_near_one() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3000, 2)).astype(np.float32) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(2, p=r) for r in p], dtype=np.int64)
    assert 0.8 < fit_temperature(z, y) < 1.25
