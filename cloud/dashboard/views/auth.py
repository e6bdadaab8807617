"""Sign-in and sign-out. A new session (and CSRF token) is issued on every sign-in."""

from __future__ import annotations

import logging
import threading
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard.security import Session
from cloud.dashboard.users import User
from cloud.dashboard.web import form, redirect, render, safe_next, services, user

router = APIRouter()
log = logging.getLogger("parkwatch.dashboard.auth")

MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0


class Throttle:
    """Slows password guessing: after MAX_FAILURES wrong passwords for one name within the
    window, that name is refused until the oldest failure leaves the window. In memory on
    purpose: a restart forgets it, which costs a guesser a restart per five tries."""

    def __init__(self) -> None:
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked_for(self, name: str, now: float) -> float:
        with self._lock:
            recent = [t for t in self._fails.get(name, []) if now - t < FAILURE_WINDOW_S]
            self._fails[name] = recent
            return FAILURE_WINDOW_S - (now - recent[0]) if len(recent) >= MAX_FAILURES else 0.0

    def failed(self, name: str, now: float) -> None:
        with self._lock:
            self._fails.setdefault(name, []).append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name, None)


class TooManyFailures(Exception):
    def __init__(self, wait_s: float) -> None:
        super().__init__(f"too many wrong passwords; try again in {wait_s:.0f} s")
        self.wait_s = wait_s


# Password checks are argon2 (64 MiB each); the JSON API's run in the server's threadpool, so a
# flood of wrong credentials would check dozens at once. Two at a time is plenty.
_VERIFY_SLOTS = threading.BoundedSemaphore(2)


def verify_password(request: Request, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs; a failure counts towards the lockout, and a name locked
    out raises :class:`TooManyFailures` without checking. The sign-in form and HTTP Basic share it."""
    throttle, now = _throttle(request), time.time()
    wait = throttle.blocked_for(name, now)
    if wait > 0:
        raise TooManyFailures(wait)
    found = None
    if name and password:
        with _VERIFY_SLOTS:
            found = services(request).get_users().authenticate(name, password)
    if found is None:
        throttle.failed(name, now)
    return found


def _throttle(request: Request) -> Throttle:
    t: Throttle | None = getattr(request.app.state, "throttle", None)
    if t is None:
        t = request.app.state.throttle = Throttle()
    return t


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    if user(request) is not None:
        return redirect(safe_next(next))
    return render(request, "login.html.j2", next=safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    f = await form(request)
    name, password, nxt = f.get("username", "").strip(), f.get("password", ""), safe_next(f.get("next"))
    try:
        found = verify_password(request, name, password)
    except TooManyFailures as e:
        log.warning("sign-in for %r refused: too many failures", name)
        return render(
            request,
            "login.html.j2",
            status_code=429,
            next=nxt,
            username=name,
            error=f"Too many wrong passwords for this user; try again in {e.wait_s:.0f} s.",
        )
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
    _throttle(request).succeeded(name)
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
