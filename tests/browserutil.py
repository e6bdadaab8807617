"""Playwright driving Debian's Chromium (never a downloaded browser) against a live dashboard."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.config import CloudConfig
from cloud.dashboard.server import DashboardServer
from tests.dashutil import password_for

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    # Module scope, not session: each test module imports this fixture, and two Playwright
    # sync drivers must never be alive at once.
    if not CHROMIUM.exists():
        pytest.fail(
            "Chromium is not installed at /usr/bin/chromium: run `sudo apt-get install -y chromium` "
            "(or `provisioning/system-deps.sh browser`); never `playwright install`",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: `.venv/bin/pip install playwright` (the dev extra)", pytrace=False
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def live_dashboard(cfg: CloudConfig, **deps: Any) -> Iterator[str]:
    """The dashboard as ``cloud serve`` runs it (uvicorn in a thread) on a free port; yields its URL."""
    cfg = cfg.model_copy(update={"dashboard": cfg.dashboard.model_copy(update={"port": 0})})
    server = DashboardServer(cfg, secret=b"browser-test-secret-0123456789", **deps)
    server.start()
    try:
        yield server.url.rstrip("/")
    finally:
        server.stop()


@contextlib.contextmanager
def page_for(chromium: Any, width: int = 1280, height: int = 900, tz: str = "Europe/Madrid") -> Iterator[Any]:
    ctx = chromium.new_context(viewport={"width": width, "height": height}, timezone_id=tz, locale="en-GB")
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        ctx.close()


def sign_in(page: Any, base: str, name: str, password: str | None = None) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password or password_for(name))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("form.signout")


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
