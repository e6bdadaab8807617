"""The dashboard as ``parkwatch cloud serve`` runs it, and its snapshot retention sweep."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from cloud.dashboard.snapshots import purge_expired
from cloud.server import CloudServer
from tests.dashutil import make_cfg, seed_users


def test_cloud_serve_runs_the_dashboard_and_stops_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    cfg = make_cfg(tmp_path, dashboard={"port": 0, "session_secret": {"file": str(secret)}})
    seed_users(cfg)
    with CloudServer(cfg, only=["dashboard"]) as server:
        dash = server.components["dashboard"]
        url = dash.url  # type: ignore[attr-defined]
        assert httpx.get(url + "healthz").json() == {"ok": True}
        r = httpx.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        page = httpx.get(url + "static/vendor/htmx-2.0.11.min.js")
        assert page.status_code == 200 and "htmx" in page.text[:2000]
    try:
        httpx.get(url + "healthz", timeout=1)
        raise AssertionError("dashboard still answering after stop")
    except httpx.HTTPError:
        pass


def test_short_session_secret_is_a_config_error(tmp_path: Path) -> None:
    from cloud.dashboard.app import create_app
    from shared.errors import ConfigError

    os.environ["PW_TEST_SHORT_SECRET"] = "short"
    cfg = make_cfg(tmp_path, dashboard={"session_secret": {"env": "PW_TEST_SHORT_SECRET"}})
    try:
        create_app(cfg)
        raise AssertionError("a 5-character secret was accepted")
    except ConfigError as e:
        assert "16 characters" in str(e)
    finally:
        del os.environ["PW_TEST_SHORT_SECRET"]


def test_purge_removes_only_expired_snapshots(tmp_path: Path) -> None:
    old, new, other = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "notes.txt"
    for p in (old, new, other):
        p.write_bytes(b"x")
    past = time.time() - 15 * 86400
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert purge_expired(tmp_path, keep_days=14) == 1
    assert not old.exists() and new.exists() and other.exists()
    assert purge_expired(tmp_path / "missing", keep_days=14) == 0
