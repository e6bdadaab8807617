"""The per-region decision: a pet label or ``none``, with a confidence. Pure numpy, no I/O.

Shared by the box (every region of every frame), ``parkwatch edge classify`` and the cloud's
evaluation, so the figures a build reports are the decisions a box makes.

*Pet evidence* of a row combines the signals the package carries (see
:class:`shared.modelpkg.RejectionSpec`): the backbone's ImageNet pet score, and the trained
head's ``1 - P(none)`` — their geometric mean in older packages, a weighted sum of their log-odds
in newer ones. Below the threshold the row is ``none``; its confidence falls from 1 (no evidence
at all) to 0.5 at the threshold, so a borderline row is abstained by the edge's confidence
threshold rather than called ``none`` with conviction. (Older packages fall linearly in the
evidence; newer ones with the log-odds distance to the threshold, which means the same thing
whether the threshold is 0.3 or 0.999.) Above it, the confidence is the head's certainty
between the pet labels. ``none`` (sure there is
no pet) and ``abstain`` (unsure) stay distinct: the edge adds ``abstain`` on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.modelpkg import NONE_LABEL, RejectionSpec

F32 = npt.NDArray[np.float32]
Floats = npt.NDArray[np.floating[Any]]

__all__ = [
    "NONE_LABEL",
    "closer_candidates",
    "decide",
    "decide_on_evidence",
    "logit",
    "none_confidence",
    "pet_evidence",
    "pet_probs",
]


def _none_index(labels: Sequence[str], rejection: RejectionSpec | None) -> int | None:
    if rejection is None or rejection.none_label is None or rejection.none_label not in labels:
        return None
    return list(labels).index(rejection.none_label)


def pet_probs(probs: Floats, labels: Sequence[str], rejection: RejectionSpec | None) -> tuple[list[str], F32]:
    """The pet labels and the head's probabilities renormalised over them (rows sum to 1)."""
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), len(labels))
    ni = _none_index(labels, rejection)
    keep = [i for i in range(len(labels)) if i != ni]
    q = p[:, keep]
    s = q.sum(axis=1, keepdims=True)
    q = np.where(s > 0, q / np.where(s > 0, s, 1.0), 1.0 / len(keep))
    return [labels[i] for i in keep], q.astype(np.float32)


def pet_evidence(
    probs: Floats,
    pet_score: Floats | None,
    labels: Sequence[str],
    rejection: RejectionSpec | None,
    *,
    full: bool | Sequence[bool],
) -> F32 | None:
    """Per-row evidence in [0, 1] that a pet is present, or None when the package has no signal.

    ``full`` says which rows are whole-frame views (one flag for all rows, or one per row): the
    package may weigh the ImageNet score differently there (``RejectionSpec.weight``)."""
    if rejection is None:
        return None
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), len(labels))
    signals: list[npt.NDArray[np.float64]] = []
    if rejection.score_output is not None and pet_score is not None:
        signals.append(np.clip(np.asarray(pet_score, dtype=np.float64).reshape(len(p)), 0.0, 1.0))
    ni = _none_index(labels, rejection)
    if ni is not None:
        signals.append(np.clip(1.0 - p[:, ni], 0.0, 1.0))
    if not signals:
        return None
    if rejection.evidence == "logit":
        if len(signals) == 1:
            return signals[0].astype(np.float32)
        flags = np.broadcast_to(np.asarray(full, dtype=bool), (len(p),))
        w = np.where(flags, rejection.weight(True), rejection.weight(False))
        z = w * logit(signals[0]) + (1 - w) * logit(signals[1])
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    e = np.exp(np.mean([np.log(np.maximum(s, 1e-12)) for s in signals], axis=0))
    return e.astype(np.float32)


EPS = 1e-6  # evidence is kept inside (EPS, 1 - EPS): float32 keeps 0.999999 apart from 1


def logit(p: Floats | float) -> npt.NDArray[np.float64]:
    """Log-odds, with ``p`` kept inside (EPS, 1 - EPS) so a sure 0 or 1 stays finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def none_confidence(
    evidence: Floats, threshold: Floats | float, rejection: RejectionSpec
) -> npt.NDArray[np.float64]:
    """How sure a row below its threshold is that it holds no pet: 1 far below, 0.5 at the
    threshold. Vectorised, shared by the box and the cloud's threshold choice."""
    e = np.asarray(evidence, dtype=np.float64)
    t = np.asarray(threshold, dtype=np.float64)
    if rejection.evidence == "logit":
        return np.asarray(1.0 / (1.0 + np.exp(logit(e) - logit(t))), dtype=np.float64)
    return np.asarray(np.clip(1.0 - 0.5 * e / np.maximum(t, 1e-9), 0.5, 1.0), dtype=np.float64)


def decide(
    probs: Floats,
    pet_score: Floats | None,
    labels: Sequence[str],
    rejection: RejectionSpec | None,
    threshold: float | Sequence[float] | None = None,
    *,
    full: bool | Sequence[bool],
) -> list[tuple[str, float]]:
    """One ``(label, confidence)`` per row: a pet label or ``"none"``.

    ``threshold`` (one, or one per row) overrides ``rejection.threshold``: the frame pipeline
    passes the stricter ``region_threshold`` for its regions, whose ``full`` flags are False. A
    package without rejection behaves as before: the argmax label and its probability.
    """
    ev = pet_evidence(probs, pet_score, labels, rejection, full=full)
    return decide_on_evidence(probs, ev, labels, rejection, threshold)


def decide_on_evidence(
    probs: Floats,
    evidence: Floats | None,
    labels: Sequence[str],
    rejection: RejectionSpec | None,
    threshold: float | Sequence[float] | None = None,
) -> list[tuple[str, float]]:
    """:func:`decide` with the rows' :func:`pet_evidence` already computed: the frame pipeline
    needs the evidence itself too (to rank pets), and computes it once per frame."""
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), len(labels))
    if rejection is None or not rejection.active:
        idx = p.argmax(axis=1)
        return [(labels[i], float(p[k, i])) for k, i in enumerate(idx)]
    pets, q = pet_probs(p, labels, rejection)
    best = q.argmax(axis=1)
    t = np.broadcast_to(
        np.asarray(rejection.threshold if threshold is None else threshold, dtype=np.float64), (len(p),)
    )
    e = np.ones(len(p)) if evidence is None else np.asarray(evidence, dtype=np.float64)
    below = (t > 0) & (e < t)
    none_conf = np.clip(none_confidence(e, t, rejection), 0.5, 1.0)
    return [
        (NONE_LABEL, float(none_conf[k])) if below[k] else (pets[b], float(q[k, b]))
        for k, b in enumerate(best)
    ]


# The second look ranks regions by one fixed blend of the two signals, whatever blend the
# package decides with: so the cloud can choose the package's thresholds on validation frames
# whose second-look regions are already known (and cached), instead of one set per blend tried.
RANK_SCORE_WEIGHT = 0.3


def closer_candidates(
    probs: Floats,
    pet_score: Floats | None,
    labels: Sequence[str],
    rejection: RejectionSpec | None,
    eligible: Sequence[bool],
    k: int,
) -> list[int]:
    """Rows worth a second, closer look: the ``k`` eligible rows with the most pet evidence.
    None for a model that cannot say "none" (it gets no tiles either)."""
    if k <= 0 or rejection is None or not rejection.active:
        return []
    spec = rejection.model_copy(
        update={"evidence": "logit", "score_weight": RANK_SCORE_WEIGHT, "full_score_weight": None}
    )
    ev = pet_evidence(probs, pet_score, labels, spec, full=False)
    if ev is None:
        return []
    rows = [i for i in np.argsort(-ev, kind="stable") if eligible[int(i)]]
    return [int(i) for i in rows[:k]]
