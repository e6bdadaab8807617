"""One router per page; the app includes them in this order."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.dashboard.views import (
    alerts,
    audit,
    auth,
    devices,
    fleet,
    labelling,
    lineage,
    models,
    quality,
    rollouts,
    users,
)

ROUTERS: list[APIRouter] = [
    auth.router,
    fleet.router,
    devices.router,
    rollouts.router,
    models.router,
    quality.router,
    alerts.router,
    labelling.router,
    lineage.router,
    audit.router,
    users.router,
]
