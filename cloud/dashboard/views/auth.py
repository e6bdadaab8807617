"""Sign-in and sign-out. A new session (and CSRF token) is issued on every sign-in."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
    purpose: a restart forgets it, which costs a guesser a restart per five tries.

    An attempt is *reserved* before its password is checked and settled after: checks still in
    flight count as failures until they are settled, so N concurrent wrong passwords get at most
    MAX_FAILURES checks and the rest a refusal (checking first and recording after let every one
    of 24 concurrent guesses through)."""

    def __init__(self) -> None:
        self._fails: dict[str, list[float]] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def _recent(self, name: str, now: float) -> list[float]:
        recent = [t for t in self._fails.get(name, []) if now - t < FAILURE_WINDOW_S]
        if recent:
            self._fails[name] = recent
        else:
            self._fails.pop(name, None)
        return recent

    def blocked_for(self, name: str, now: float) -> float:
        with self._lock:
            recent = self._recent(name, now)
            return FAILURE_WINDOW_S - (now - recent[0]) if len(recent) >= MAX_FAILURES else 0.0

    def reserve(self, name: str, now: float) -> None:
        """Count one attempt now; raises :class:`TooManyFailures` instead if the name is locked."""
        with self._lock:
            recent = self._recent(name, now)
            if len(recent) >= MAX_FAILURES:
                raise TooManyFailures(FAILURE_WINDOW_S - (now - recent[0]))
            inflight = self._inflight.get(name, 0)
            if len(recent) + inflight >= MAX_FAILURES:
                raise TooManyFailures(1.0)  # the checks in flight decide; ask again shortly
            self._inflight[name] = inflight + 1

    def settle(self, name: str, now: float, failed: bool, clear: bool = False) -> None:
        """End a reserved attempt: a failure is recorded; ``clear`` forgets earlier failures."""
        with self._lock:
            left = self._inflight.get(name, 1) - 1
            if left > 0:
                self._inflight[name] = left
            else:
                self._inflight.pop(name, None)
            if failed:
                self._fails.setdefault(name, []).append(now)
            elif clear:
                self._fails.pop(name, None)


class TooManyFailures(Exception):
    def __init__(self, wait_s: float) -> None:
        super().__init__(f"too many wrong passwords; try again in {wait_s:.0f} s")
        self.wait_s = wait_s


class ChecksBusy(Exception):
    """More password checks are waiting than the dashboard queues; the caller answers 503."""


class PasswordChecks:
    """Runs argon2 checks (64 MiB, tens of ms each) off the event loop, two at a time, with at
    most ``max_waiting`` queued: a flood of sign-ins can neither stall every other request (the
    check used to run on the event loop: 30 parallel wrong sign-ins took /healthz from 40 ms to
    5 s) nor pile up without bound. Waiting callers hold no server thread."""

    def __init__(self, workers: int = 2, max_waiting: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._max = workers + max_waiting
        self._lock = threading.Lock()
        self.pending = 0  # submitted, not finished
        self.running = 0
        self.peak_running = 0
        self.refused = 0

    def _run(self, fn: Callable[[], User | None]) -> User | None:
        with self._lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            return fn()
        finally:
            with self._lock:
                self.running -= 1

    async def check(self, fn: Callable[[], User | None]) -> User | None:
        with self._lock:
            if self.pending >= self._max:
                self.refused += 1
                raise ChecksBusy("too many sign-ins at once; try again in a few seconds")
            self.pending += 1
        try:
            return await asyncio.wrap_future(self._pool.submit(self._run, fn))
        finally:
            with self._lock:
                self.pending -= 1


PASSWORD_CHECKS = PasswordChecks()


async def verify_password(request: Request, name: str, password: str, clear: bool = False) -> User | None:
    """The user if ``password`` is theirs; a failure counts towards the lockout, and a name locked
    out raises :class:`TooManyFailures` without checking. The sign-in form and HTTP Basic share it;
    ``clear`` (the form) forgets the name's earlier failures on success."""
    throttle = _throttle(request)
    throttle.reserve(name, time.time())
    failed = True
    try:
        found = None
        if name and password:
            users = services(request).get_users()
            found = await PASSWORD_CHECKS.check(lambda: users.authenticate(name, password))
        failed = found is None
        return found
    except ChecksBusy:
        failed = False  # not checked: not the user's failure
        raise
    finally:
        throttle.settle(name, time.time(), failed, clear)


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
        found = await verify_password(request, name, password, clear=True)
    except ChecksBusy as e:
        return render(request, "login.html.j2", status_code=503, next=nxt, username=name, error=f"{e}.")
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
async def healthz() -> dict[str, bool]:
    """Answered on the event loop itself, needing no worker thread."""
    return {"ok": True}
