"""The audit log, newest first, with the result of verifying its hash chain."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard import adapters
from cloud.dashboard.web import render, require, services
from shared.errors import ParkwatchError

router = APIRouter()


@router.get("/audit")
def audit_page(request: Request, subject: str | None = None, page: int = 1) -> Response:
    require(request)
    log = services(request).get_audit()
    size = services(request).cfg.dashboard.page_size
    check = log.verify()
    try:  # the signed checkpoint catches what the chain cannot: the newest entries removed
        anchor = adapters.release_channel(services(request)).verify_audit_anchor()
    except ParkwatchError:
        anchor = None
    entries = log.entries(subject=subject or None, newest_first=True, limit=size * page + 1)
    shown = entries[size * (page - 1) : size * page]
    return render(
        request,
        "audit.html.j2",
        title="Audit log",
        check=check,
        anchor=anchor,
        entries=shown,
        subject=subject or "",
        page=page,
        more=len(entries) > size * page,
    )
