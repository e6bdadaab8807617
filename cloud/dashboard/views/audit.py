"""The audit log, newest first, with the result of verifying its hash chain."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard.web import render, require, services

router = APIRouter()


@router.get("/audit")
def audit_page(request: Request, subject: str | None = None, page: int = 1) -> Response:
    require(request)
    log = services(request).get_audit()
    size = services(request).cfg.dashboard.page_size
    check = log.verify()
    entries = log.entries(subject=subject or None, newest_first=True, limit=size * page + 1)
    shown = entries[size * (page - 1) : size * page]
    return render(
        request,
        "audit.html.j2",
        title="Audit log",
        check=check,
        entries=shown,
        subject=subject or "",
        page=page,
        more=len(entries) > size * page,
    )
