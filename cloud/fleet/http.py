"""``POST /api/feedback``: ground-truth labels over HTTP, mounted by the dashboard / serve app.

The router holds no auth of its own: the app that mounts it adds its login dependency
(``dependencies=[...]`` on ``include_router``) and may pass ``actor_of`` to name the user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.fleet.errors import BadRequest, NotFound
from cloud.fleet.feedback import label_prediction
from cloud.fleet.records import Prediction
from cloud.fleet.store import FleetStore


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str | None = Field(None, description="DEVICE:SEQ")
    snapshot: str | None = None
    label: Literal["cat", "dog", "none", "neither"] = Field(
        description="what the frame shows; none = no cat or dog (neither is its older name, stored as none)"
    )
    actor: str | None = Field(None, min_length=1, max_length=100)
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _one_ref(self) -> FeedbackIn:
        if (self.prediction_id is None) == (self.snapshot is None):
            raise ValueError("give exactly one of prediction_id and snapshot")
        return self


def feedback_router(
    store: FleetStore | Callable[[], FleetStore],
    audit: Any | None = None,
    actor_of: Callable[[Request], str | None] | None = None,
    snapshot_visible: Callable[[Prediction], bool] | None = None,
) -> APIRouter:
    """``snapshot_visible``: the mounting app's snapshot privacy gate (see ``label_prediction``)."""
    router = APIRouter()

    def get_store() -> FleetStore:
        return store if isinstance(store, FleetStore) else store()

    @router.post("/api/feedback", status_code=201)
    def post_feedback(body: FeedbackIn, request: Request) -> dict[str, Any]:
        actor = (actor_of(request) if actor_of else None) or body.actor
        if not actor:
            raise HTTPException(422, 'say who labels: send "actor" or log in')
        try:
            row = label_prediction(
                get_store(),
                body.label,
                actor,
                prediction_id=body.prediction_id,
                snapshot=body.snapshot,
                comment=body.comment,
                audit=audit,
                snapshot_visible=snapshot_visible,
            )
        except NotFound as e:
            raise HTTPException(404, str(e)) from e
        except BadRequest as e:
            raise HTTPException(422, str(e)) from e
        return row.to_dict()

    return router
