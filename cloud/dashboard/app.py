"""The dashboard app factory: sessions, CSRF, error pages and every page's router.

``create_app`` takes its back ends as arguments (tests and the benchmark pass real stores on
temporary files); anything not passed is opened from the config on first use.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.config import CloudConfig
from cloud.dashboard.api import is_api, json_error, mount_feedback_api
from cloud.dashboard.config import read_session_secret
from cloud.dashboard.deps import Services
from cloud.dashboard.errors import AuthError, CsrfError, Forbidden
from cloud.dashboard.security import COOKIE, CSRF_FIELD, CSRF_HEADER, Session, csrf_ok, sign, unsign
from cloud.dashboard.users import UserStore
from cloud.dashboard.web import make_templates, render, session
from cloud.fleet.errors import NotFound as FleetNotFound
from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.governance.errors import AlertNotFound
from cloud.registry.audit import AuditLog
from cloud.registry.errors import NotFoundError
from cloud.registry.store import Registry
from cloud.release.channel import ReleaseChannel
from shared.errors import ParkwatchError

log = logging.getLogger("parkwatch.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def session_secret(cfg: CloudConfig) -> bytes:
    """The configured secret, or a random one (sessions then end when the server restarts)."""
    ref = cfg.dashboard.session_secret
    if ref is None:
        log.warning("dashboard.session_secret is not set: using a random one; sign-ins end on restart")
        return secrets.token_bytes(32)
    return read_session_secret(ref).encode("utf-8")


async def csrf_guard(request: Request) -> None:
    """Every state-changing request must carry this session's CSRF token (form field or header).

    The JSON API (``/api/…``) is left to its own dependency, ``api.api_user``, which asks for the
    token from cookie sessions and not from clients sending HTTP Basic credentials.
    """
    if request.method in SAFE_METHODS or is_api(request):
        return
    token = request.headers.get(CSRF_HEADER)
    if not token:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            token = str((await request.form()).get(CSRF_FIELD) or "")
    if not csrf_ok(session(request), token):
        raise CsrfError(
            "this form is missing its security token or the token is stale; reload the page and submit again"
        )


def create_app(
    cfg: CloudConfig,
    *,
    users: UserStore | None = None,
    registry: Registry | None = None,
    fleet: FleetStore | None = None,
    audit: AuditLog | None = None,
    alerts: AlertStore | None = None,
    release_channel: ReleaseChannel | None = None,
    secret: bytes | None = None,
) -> FastAPI:
    from cloud.dashboard.views import ROUTERS

    svc = Services(
        cfg,
        users=users,
        audit=audit,
        registry=registry,
        fleet=fleet,
        alerts=alerts,
        release_channel=release_channel,
    )
    app = FastAPI(
        title="parkwatch dashboard",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(csrf_guard)],
    )
    app.state.services = svc
    app.state.templates = make_templates()
    key = secret if secret is not None else session_secret(cfg)
    max_age = cfg.dashboard.session_max_age_s

    @app.middleware("http")
    async def sessions(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        raw = request.cookies.get(COOKIE)
        sess = unsign(raw, key, max_age) if raw else None
        fresh = sess is None
        if sess is None:
            sess = Session()
        request.state.session = sess
        request.state.session_dirty = fresh
        request.state.user = None
        if sess.user is not None:
            found = svc.get_users().find(sess.user)
            # A password or role change bumps the epoch and so ends older sessions.
            if found is not None and found.session_epoch == sess.epoch:
                request.state.user = found
        response = await call_next(request)
        if request.state.session_dirty:
            response.set_cookie(
                COOKIE,
                sign(request.state.session, key),
                max_age=max_age,
                httponly=True,
                samesite="lax",
                secure=cfg.dashboard.secure_cookies,
                path="/",
            )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        )
        return response

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> Response:
        if is_api(request):
            return json_error(401, str(exc))
        if request.headers.get("hx-request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(nxt, safe='')}", status_code=303)

    def _error_page(status: int, title: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(request: Request, exc: Exception) -> Response:
            if is_api(request):
                return json_error(status, str(exc))
            return render(request, "error.html.j2", status_code=status, title=title, message=str(exc))

        return handler

    app.add_exception_handler(Forbidden, _error_page(403, "Not allowed"))
    app.add_exception_handler(CsrfError, _error_page(403, "Form refused"))
    app.add_exception_handler(ParkwatchError, _error_page(400, "Cannot do that"))
    # Starlette picks the most specific class along the exception's MRO, so these win over the 400.
    for not_found in (FleetNotFound, NotFoundError, AlertNotFound):
        app.add_exception_handler(not_found, _error_page(404, "Not found"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if is_api(request):
            return json_error(exc.status_code, exc.detail, exc.headers)
        if not hasattr(request.state, "session"):
            return HTMLResponse(str(exc.detail), status_code=exc.status_code)
        title = "Not found" if exc.status_code == 404 else "Error"
        return render(
            request, "error.html.j2", status_code=exc.status_code, title=title, message=str(exc.detail)
        )

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    for router in ROUTERS:
        app.include_router(router)
    mount_feedback_api(app, svc)
    return app
