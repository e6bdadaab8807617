"""Lineage from a prediction id (``device:seq``) or a model version, via ``cloud.lineage``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard import adapters
from cloud.dashboard.deps import Services
from cloud.dashboard.regions import decorate
from cloud.dashboard.web import render, require, services
from shared.errors import ParkwatchError

router = APIRouter()


@router.get("/lineage")
def lineage_page(request: Request, q: str = "") -> Response:
    require(request)
    svc = services(request)
    q = q.strip()
    result, error, recent = None, None, []
    if q and ":" not in q and not _is_model(svc, q):
        # A device name: offer its recent predictions to start from.
        recent = svc.get_fleet().predictions(device=q, limit=20)
    elif q:
        try:
            result = adapters.lineage_of(svc, q)
            if isinstance(result.get("prediction"), dict):
                # Lighting and the pet's regions as the device and labelling pages word them.
                result["prediction"] = decorate(result["prediction"])
        except ParkwatchError as e:
            error = str(e)
    if not q:
        recent = svc.get_fleet().predictions(limit=20)
    return render(request, "lineage.html.j2", title="Lineage", q=q, result=result, error=error, recent=recent)


def _is_model(svc: Services, q: str) -> bool:
    try:
        svc.get_registry().get_model(q)
        return True
    except ParkwatchError:
        return False
