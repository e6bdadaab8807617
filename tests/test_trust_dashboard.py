"""The dashboard under hostile users, through the real app over real HTTP (uvicorn in a thread).

Before the fixes: argon2 checks ran on the event loop (30 parallel wrong sign-ins stalled
/healthz for seconds); the lockout was checked before the password check and recorded after it
(24 concurrent wrong HTTP Basic passwords all got a 401, none a 429); a removed user's cookie
worked again once the name was re-added (the session epoch restarted at 1); and ``POST
/api/feedback`` labelled a snapshot of a site not in ``snapshot_sites``, its 201 confirming that
the snapshot existed.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.config import CloudConfig
from cloud.dashboard.users import UserStore
from cloud.dashboard.views import auth
from cloud.fleet.store import FleetStore
from tests.browserutil import live_dashboard
from tests.dashutil import client_for, make_cfg, password_for, seed_fleet, seed_users, sign_in


@pytest.fixture
def cfg(tmp_path: Path) -> CloudConfig:
    c = make_cfg(tmp_path, dashboard={"snapshot_sites": ["park1"]})
    seed_users(c)
    # box0000 at park1 (labelling allowed), box0001 at park2 (not); snapshots box000N-snap-1
    seed_fleet(c, devices=2, hours=0.05, step_s=60, predictions=10)
    return c


@pytest.fixture
def server(cfg: CloudConfig) -> Iterator[str]:
    with live_dashboard(cfg) as url:
        yield url


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def _login(base: str, name: str, password: str) -> int:
    # Generous: 30 real argon2 checks, two at a time, on a loaded machine (not a timed assertion).
    with httpx.Client(base_url=base, timeout=600) as c:
        import re

        page = c.get("/login")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert token
        r = c.post(
            "/login",
            data={"username": name, "password": password, "csrf_token": token.group(1)},
            follow_redirects=False,
        )
        return r.status_code


@pytest.mark.timeout(1200)
def test_healthz_answers_while_password_checks_are_in_flight(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 parallel wrong sign-ins (each its own name, so no lockout): while the argon2 checks are
    held in flight, /healthz still answers and at most two checks run at once."""
    gate = threading.Event()
    entered = threading.Semaphore(0)
    real = UserStore.authenticate

    def held(self: UserStore, name: str, password: str) -> Any:
        entered.release()
        gate.wait(60)
        return real(self, name, password)  # the real argon2 check, once released

    monkeypatch.setattr(UserStore, "authenticate", held)
    pool = ThreadPoolExecutor(30)
    try:
        futures = [pool.submit(_login, server, f"guesser{i:02d}", "wrong-password-123") for i in range(30)]
        assert entered.acquire(timeout=30), "no password check started"
        assert entered.acquire(timeout=30), "the second password check did not start"
        # Two checks are now held inside argon2's slot; the other sign-ins queue behind them.
        with httpx.Client(base_url=server, timeout=10) as c:
            for _ in range(5):
                assert c.get("/healthz").json() == {"ok": True}
        assert not any(f.done() for f in futures), "a sign-in finished while its check was held"
        assert auth.PASSWORD_CHECKS.running == 2 and auth.PASSWORD_CHECKS.peak_running == 2
    finally:
        gate.set()
        codes = [f.result(timeout=900) for f in futures] if "futures" in locals() else []
        pool.shutdown(wait=True)
    assert codes == [401] * 30


def test_concurrent_wrong_basic_passwords_hit_the_lockout(server: str, cfg: CloudConfig) -> None:
    body = {"prediction_id": "box0000:3", "label": "dog"}

    def guess(i: int) -> int:
        with httpx.Client(base_url=server, timeout=600) as c:
            return c.post("/api/feedback", json=body, headers=_basic("engineer", f"wrong-{i}")).status_code

    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(guess, range(24)))
    assert sorted(codes) == [401] * auth.MAX_FAILURES + [429] * (24 - auth.MAX_FAILURES), codes
    # Locked now even for the right password, as the sign-in form is.
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.post("/api/feedback", json=body, headers=_basic("engineer", password_for("engineer")))
        assert r.status_code == 429 and "Retry-After" in r.headers
    assert FleetStore(cfg.paths.fleet_db).feedback() == []


def test_a_removed_users_session_does_not_come_back(cfg: CloudConfig) -> None:
    store = UserStore(cfg.paths.dashboard_db)
    store.add("alice", "admin", "alice-long-password")
    c = client_for(cfg)
    sign_in(c, "alice", "alice-long-password")
    assert c.get("/users").status_code == 200
    store.remove("alice")
    assert c.get("/models", follow_redirects=False).status_code in (303, 307)
    store.add("alice", "viewer", "another-long-password")  # the name comes back, another person
    store.close()
    r = c.get("/models", follow_redirects=False)
    assert r.status_code in (303, 307) and "/login" in r.headers["location"], "old cookie signed in again"
    assert c.get("/users", follow_redirects=False).status_code in (303, 307, 401, 403)


def test_feedback_api_refuses_a_snapshot_of_a_site_without_snapshots(cfg: CloudConfig) -> None:
    c = client_for(cfg)
    auth_hdr = _basic("engineer", password_for("engineer"))
    hidden = c.post("/api/feedback", json={"snapshot": "box0001-snap-1", "label": "cat"}, headers=auth_hdr)
    absent = c.post("/api/feedback", json={"snapshot": "box0001-snap-9", "label": "cat"}, headers=auth_hdr)
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["detail"].replace("snap-1", "snap-X") == absent.json()["detail"].replace(
        "snap-9", "snap-X"
    )
    assert FleetStore(cfg.paths.fleet_db).feedback() == []
    ok = c.post("/api/feedback", json={"snapshot": "box0000-snap-1", "label": "cat"}, headers=auth_hdr)
    assert ok.status_code == 201, ok.text
    assert [(f.device, f.label) for f in FleetStore(cfg.paths.fleet_db).feedback()] == [("box0000", "cat")]


def test_seeded_layout(cfg: CloudConfig) -> None:
    """The fixture's assumption: box0001's snapshot exists, at a site outside snapshot_sites."""
    pred = FleetStore(cfg.paths.fleet_db).prediction_by_snapshot("box0001-snap-1")
    assert pred.site not in cfg.dashboard.snapshot_sites


def test_lineage_page_does_not_name_a_hidden_snapshot(cfg: CloudConfig) -> None:
    c = client_for(cfg)
    sign_in(c, "viewer")
    assert "box0000-snap-1" in c.get("/lineage", params={"q": "box0000:1"}).text  # park1: allowed
    assert "box0001-snap-1" not in c.get("/lineage", params={"q": "box0001:1"}).text  # park2: hidden
