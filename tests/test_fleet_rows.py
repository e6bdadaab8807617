"""The gap logic both fleet writers share (cloud/fleet/rows.py), as pure functions: which seqs
open gaps, and how late seqs shrink, split or close them, stored or opened in the same write."""

from __future__ import annotations

from cloud.fleet.rows import CAUSE_BEFORE, CAUSE_LOST, SeqWalk, plan_fill
from shared.protocol import Prediction, PredictionBatch


def _batch(seqs: list[int], evicted: int = 0) -> PredictionBatch:
    preds = [
        Prediction(seq=s, ts=1000.0 + s, camera="cam1", label="cat", confidence=0.9, model_version="m1")
        for s in seqs
    ]
    return PredictionBatch(device="d", site="p", predictions=preds, evicted_total=evicted)


def test_walk_opens_gaps_and_collects_late_seqs() -> None:
    w = SeqWalk("d", "p", None, 0)
    assert w.batch(_batch([3, 4, 8]), 5.0) == set()
    assert w.batch(_batch([2, 6, 9]), 6.0) == {2, 6}
    assert w.max_seq == 9
    assert w.opened == [(None, "p", 1, 2, CAUSE_BEFORE, 5.0), (None, "p", 5, 7, CAUSE_LOST, 5.0)]
    assert sorted(w.late) == [2, 6]


def test_fill_splits_shrinks_and_deletes_stored_gaps_and_shrinks_opened_ones() -> None:
    stored = [
        (7, "p", 10, 20, CAUSE_LOST, 1.0),
        (8, "p", 30, 31, CAUSE_LOST, 1.0),
        (9, "p", 40, 45, "x", 1.0),
    ]
    opened = [(None, "p", 50, 52, CAUSE_LOST, 2.0)]
    plan = plan_fill(stored, opened, [10, 15, 15, 20, 30, 31, 51, 60, 5])
    assert plan.recovered == {10, 15, 20, 30, 31, 51}
    assert plan.delete == [8]
    assert plan.update == [(11, 14, 7)]  # the stored gap keeps its id for its first piece
    assert plan.insert == [
        (None, "p", 16, 19, CAUSE_LOST, 1.0),
        (None, "p", 50, 50, CAUSE_LOST, 2.0),
        (None, "p", 52, 52, CAUSE_LOST, 2.0),
    ]
    untouched = plan_fill(stored, opened, [])
    assert (untouched.delete, untouched.update, untouched.insert) == ([], [], opened)
