"""The dashboard's JSON API (``/api/…``, today ``POST /api/feedback``): who may call it, and
JSON errors instead of HTML pages.

Two ways in, checked by :func:`api_user`:

* a signed-in browser session (the ``parkwatch_session`` cookie), which, being sent by the
  browser on its own, must also carry the session's CSRF token in ``X-CSRF-Token``;
* HTTP Basic with an existing dashboard user's name and password, for labelling tools and
  scripts. The password is checked as the sign-in form checks it (same user store, same
  throttle on wrong passwords). No CSRF token: the client sends the credentials itself, and the
  API takes only ``application/json`` bodies, which a cross-site form cannot send.

Either way the user's role must allow the action (``label`` for feedback), and that user is
the actor of the audit entry. ``/api/`` paths are left out of the app-wide CSRF guard because
this dependency does the check, for cookie sessions only.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from cloud.dashboard.deps import Services
from cloud.dashboard.errors import AuthError, CsrfError
from cloud.dashboard.security import CSRF_HEADER, csrf_ok
from cloud.dashboard.snapshots import visible
from cloud.dashboard.users import User
from cloud.dashboard.web import require, session
from cloud.fleet.records import Prediction

API_PREFIX = "/api/"
REALM = 'Basic realm="parkwatch dashboard", charset="UTF-8"'


def is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def json_error(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"detail": ...}``, the shape FastAPI gives its own errors (401s name the Basic realm)."""
    extra = dict(headers or {})
    if status == 401:
        extra.setdefault("WWW-Authenticate", REALM)
    return JSONResponse({"detail": detail}, status_code=status, headers=extra or None)


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthError(
            f"the {scheme or 'empty'} authorization scheme is not accepted here: send HTTP Basic "
            "with a dashboard user's name and password, or use a signed-in browser session"
        )
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthError("the Basic credentials are not valid base64 of NAME:PASSWORD") from None
    name, sep, password = decoded.partition(":")
    if not sep or not name.strip() or not password:
        raise AuthError("the Basic credentials must be NAME:PASSWORD of a dashboard user")
    return name.strip(), password


async def _basic_user(request: Request, header: str) -> User:
    from cloud.dashboard.views.auth import ChecksBusy, TooManyFailures, verify_password

    name, password = _basic_credentials(header)
    try:
        found = await verify_password(request, name, password)
    except ChecksBusy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "5"}) from None
    except TooManyFailures as e:
        raise HTTPException(
            429,
            f"too many wrong passwords for user {name!r}; try again in {e.wait_s:.0f} s",
            headers={"Retry-After": str(int(e.wait_s) + 1)},
        ) from None
    if found is None:
        raise AuthError("user name or password is wrong")
    # No throttle.succeeded(name) here: a tool sends the right password with every request, and
    # clearing the failures each time would let guesses interleaved with it go on for ever.
    return found


def api_user(action: str) -> Callable[[Request], Awaitable[User]]:
    """A dependency: the caller (Basic credentials or cookie session + CSRF) if allowed ``action``.
    Async, so a caller waiting for its password check holds no server thread."""

    async def dependency(request: Request) -> User:
        header = request.headers.get("authorization")
        if header is not None:
            # Explicit credentials: they name the user, not the cookie; and no cookie is issued.
            request.state.user = await _basic_user(request, header)
            request.state.session_dirty = False
        elif request.state.user is None:
            raise AuthError(
                "not signed in: send HTTP Basic credentials of a dashboard user, "
                "or a signed-in session cookie with its X-CSRF-Token"
            )
        elif not csrf_ok(session(request), request.headers.get(CSRF_HEADER)):
            raise CsrfError(
                "a request with the session cookie needs the session's CSRF token in the "
                'X-CSRF-Token header (the page\'s <meta name="csrf-token">); '
                "tools should use HTTP Basic instead"
            )
        user = require(request, action)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise HTTPException(415, "send the body as JSON (Content-Type: application/json)")
        return user

    return dependency


class _LockedAudit:
    """The audit log, appended under the dashboard's write lock: it shares the registry's
    connection with approvals and rollouts, whose transactions must not interleave with it."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc

    def append(self, *args: Any, **kwargs: Any) -> Any:
        with self._svc.write_lock:
            return self._svc.get_audit().append(*args, **kwargs)


def mount_feedback_api(app: FastAPI, svc: Services) -> None:
    """``POST /api/feedback`` (the fleet domain's router) for users whose role may label."""
    from cloud.fleet.http import feedback_router

    def actor_of(request: Request) -> str | None:
        u = request.state.user
        return u.name if u is not None else None

    def snapshot_visible(pred: Prediction) -> bool:
        # The labelling page's privacy gate: only sites in [dashboard] snapshot_sites, within
        # snapshot_keep_days; anything else is answered as if it did not exist.
        return visible(svc.cfg, pred, time.time())

    app.include_router(
        feedback_router(
            svc.get_fleet, audit=_LockedAudit(svc), actor_of=actor_of, snapshot_visible=snapshot_visible
        ),
        dependencies=[Depends(api_user("label"))],
    )
