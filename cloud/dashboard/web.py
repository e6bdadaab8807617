"""Request helpers every page uses: who is signed in, may they do this, render, redirect, audit."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from cloud.dashboard.deps import Services
from cloud.dashboard.errors import AuthError, Forbidden
from cloud.dashboard.security import CSRF_FIELD, Session
from cloud.dashboard.users import PERMISSIONS, User, allowed
from shared.textfmt import flat

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
T = TypeVar("T")


def _when(ts: float | str | None) -> Markup:
    """A ``<time>`` element: UTC text that the page script rewrites into the viewer's own zone."""
    if ts is None or ts == "":
        return Markup('<span class="muted">never</span>')
    if isinstance(ts, str):  # the registry keeps ISO 8601 strings
        try:
            parsed = dt.datetime.fromisoformat(ts)
        except ValueError:
            return Markup(escape(ts))
        ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    try:
        d = dt.datetime.fromtimestamp(float(ts), tz=dt.UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        # Out of the calendar's range (-Infinity, 1e300, NaN): show what is stored, never a 500.
        return Markup(f'<span class="muted">{escape(str(ts))}</span>')
    iso = d.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup(f'<time datetime="{iso}">{d:%Y-%m-%d %H:%M:%S} UTC</time>')


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "never"
    s = max(0.0, (now or time.time()) - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _num(v: Any, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "—"
    try:
        return f"{float(v):.{digits}f}{unit}"
    except (TypeError, ValueError):
        return str(v)


def _pct(v: Any, digits: int = 1) -> str:
    return "—" if v is None else f"{float(v) * 100:.{digits}f} %"


def make_templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(TEMPLATES_DIR))
    t.env.filters.update(
        when=_when,
        ago=_ago,
        num=_num,
        pct=_pct,
        tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str),
        urlq=lambda v: quote(str(v), safe=""),
    )
    t.env.autoescape = True
    return t


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def session(request: Request) -> Session:
    s: Session = request.state.session
    return s


def user(request: Request) -> User | None:
    u: User | None = request.state.user
    return u


def require(request: Request, action: str = "view") -> User:
    """The signed-in user if their role allows ``action``; otherwise sign in or 403."""
    u = user(request)
    if u is None:
        raise AuthError("sign in to continue")
    if not allowed(u.role, action):
        roles = ", ".join(sorted(r.value for r in PERMISSIONS.get(action, frozenset())))
        raise Forbidden(
            f"your role ({u.role.value}) may not {action.replace('_', ' ')}; "
            f"this needs one of: {roles}. Ask an admin if you should."
        )
    return u


def flash(request: Request, message: str) -> None:
    session(request).flash = message
    request.state.session_dirty = True


def redirect(url: str, request: Request | None = None, message: str | None = None) -> RedirectResponse:
    if request is not None and message:
        flash(request, message)
    return RedirectResponse(url, status_code=303)


def safe_next(target: str | None) -> str:
    """Only same-site relative paths, so a crafted sign-in link cannot bounce users elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def form(request: Request) -> dict[str, str]:
    """The submitted form (the CSRF token was already checked by the app-wide guard)."""
    data = await request.form()
    return {k: str(v) for k, v in data.items() if k != CSRF_FIELD and isinstance(v, str)}


async def run_change(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a state-changing service call off the event loop, one at a time.

    The service layers sign TUF metadata and wait for MQTT acknowledgements, which must not
    freeze every other page; and they share one registry connection, on which two transactions
    must never interleave.
    """
    svc = services(request)

    def locked() -> T:
        with svc.write_lock:
            return fn(*args, **kwargs)

    return await run_in_threadpool(locked)


def audit(request: Request, action: str, subject: str, details: dict[str, Any] | None = None) -> None:
    """Record a state change under the signed-in user's name (``dashboard:<name>``)."""
    u = user(request)
    actor = u.name if u else "anonymous"
    svc = services(request)
    with svc.write_lock:  # the audit log shares the registry's connection with approvals and rollouts
        svc.get_audit().append(actor, action, subject, {**(details or {}), "via": "dashboard"})


def render(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    s = session(request)
    msg = s.flash
    if msg:
        s.flash = None
        request.state.session_dirty = True
    u = user(request)
    svc = services(request)
    base = {
        "request": request,
        "user": u,
        "can": (lambda action: u is not None and allowed(u.role, action)),
        "csrf_token": s.csrf,
        "csrf_field": Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(s.csrf)}">'),
        "flash": msg,
        "refresh_s": svc.cfg.dashboard.refresh_s,
        "partial": request.headers.get("hx-request") == "true",
        "now": time.time(),
        "flat": flat,  # nested details as (dotted key, readable value) pairs
    }
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, {**base, **ctx}, status_code=status_code)
