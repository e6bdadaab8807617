"""Sign-in and sign-out. A new session (and CSRF token) is issued on every sign-in."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard.security import Session
from cloud.dashboard.web import form, redirect, render, safe_next, services, user

router = APIRouter()
log = logging.getLogger("parkwatch.dashboard.auth")


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    if user(request) is not None:
        return redirect(safe_next(next))
    return render(request, "login.html.j2", next=safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    f = await form(request)
    name, password, nxt = f.get("username", "").strip(), f.get("password", ""), safe_next(f.get("next"))
    found = services(request).get_users().authenticate(name, password) if name and password else None
    if found is None:
        log.warning("failed sign-in for %r from %s", name, request.client.host if request.client else "?")
        return render(
            request,
            "login.html.j2",
            status_code=401,
            next=nxt,
            username=name,
            error="User name or password is wrong.",
        )
    # Fresh session and token: a token seen before sign-in is worthless after it.
    request.state.session = Session(user=found.name, epoch=found.session_epoch)
    request.state.session_dirty = True
    request.state.user = found
    log.info("%s signed in", found.name)
    return redirect(nxt)


@router.post("/logout")
def logout(request: Request) -> Response:
    request.state.session = Session()
    request.state.session_dirty = True
    return redirect("/login")


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}
