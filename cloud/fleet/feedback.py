"""The ground-truth feedback service: one function used by the CLI, the HTTP endpoint and the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cloud.fleet.errors import BadRequest, NotFound
from cloud.fleet.records import Labelled, Prediction
from cloud.fleet.store import FleetStore


def label_prediction(
    store: FleetStore,
    label: str,
    actor: str,
    prediction_id: str | None = None,
    snapshot: str | None = None,
    comment: str | None = None,
    audit: Any | None = None,
    snapshot_visible: Callable[[Prediction], bool] | None = None,
) -> Labelled:
    """Record what a frame really showed; exactly one of ``prediction_id`` and ``snapshot``.

    ``snapshot_visible`` is the privacy gate of a caller that must not label (nor confirm the
    existence of) a snapshot its user may not see: a hidden snapshot gets exactly the answer an
    absent one gets."""
    if (prediction_id is None) == (snapshot is None):
        raise BadRequest("name exactly one of a prediction id (DEVICE:SEQ) or --snapshot ID")
    pred = store.prediction(prediction_id) if prediction_id else store.prediction_by_snapshot(snapshot or "")
    if snapshot is not None and snapshot_visible is not None and not snapshot_visible(pred):
        raise NotFound(f"no prediction carries snapshot {snapshot!r}")
    row = store.add_feedback(pred, label, actor, comment)
    if audit is not None:
        audit.append(
            actor,
            "feedback.label",
            f"prediction:{row.prediction_id}",
            {
                "label": label,
                "predicted": row.predicted,
                "model_version": row.model_version,
                "snapshot": row.snapshot,
                "comment": comment,
            },
        )
    return row
