"""The dashboard in a real browser (Debian's Chromium through Playwright) against real parts:
the real broker, real fleet ingest, the real release service and real edge updaters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.fleet.ingest_worker import FleetIngest
from cloud.governance.alerts import AlertStore
from cloud.governance.rules import Finding
from cloud.registry.audit import AuditLog
from cloud.registry.store import Registry
from shared.broker import EmbeddedBroker
from tests.browserutil import chromium, live_dashboard, page_for, shot, sign_in  # noqa: F401
from tests.dashutil import make_cfg, seed_fleet, seed_users
from tests.simdevice import SimDevice

pytestmark = pytest.mark.browser


@pytest.fixture
def fleet_cfg(tmp_path: Path, broker: EmbeddedBroker):  # type: ignore[no-untyped-def]
    cfg = make_cfg(
        tmp_path,
        mqtt={"host": "127.0.0.1", "port": broker.port},
        fleet={"heartbeat_timeout_s": 3.0, "client_id": f"ingest-{tmp_path.name}"[:60]},
        dashboard={"refresh_s": 1.0, "snapshot_sites": ["park1"]},
    )
    seed_users(cfg)
    return cfg


def test_sign_in_and_local_times(chromium, fleet_cfg) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    AuditLog(fleet_cfg.paths.registry_db).append("pipeline", "register", "model:v1", {})
    with live_dashboard(fleet_cfg) as base, page_for(chromium) as page:
        page.goto(base + "/audit")
        assert "/login" in page.url  # sent to sign in first
        page.get_by_label("User name").fill("viewer")
        page.get_by_label("Password").fill("wrong-password-x")
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("alert").inner_text().startswith("User name or password is wrong")
        shot(page, "01-sign-in-refused")
        page.get_by_label("Password").fill("pw-viewer-correct-horse")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/audit")
        assert "Chain verified" in page.inner_text("#chain")
        # times are rewritten into the viewer's zone (Madrid is CET/CEST, never "UTC")
        t = page.locator("time").first
        assert "UTC" not in t.inner_text() and t.get_attribute("data-local") == "1"
        assert page.inner_text("#tzname") == "Europe/Madrid"
        # keyboard: the skip link is the first tab stop and jumps to the content
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        shot(page, "02-audit-log")


class Heartbeat:
    """Keeps a simulated device sending telemetry until stopped (then it goes silent, still connected)."""

    def __init__(self, dev: SimDevice, every_s: float = 0.5) -> None:
        self.dev, self.every_s = dev, every_s
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.dev.telemetry()
            self._stop.wait(self.every_s)

    def __enter__(self) -> Heartbeat:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def ingest(fleet_cfg) -> Iterator[FleetIngest]:  # type: ignore[no-untyped-def]
    ing = FleetIngest(fleet_cfg)
    ing.start()
    assert ing.wait_connected(10), "fleet ingest did not connect to the broker"
    try:
        yield ing
    finally:
        ing.stop()


def test_device_turns_offline_within_heartbeat_timeout(chromium, fleet_cfg, broker, ingest) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="cam-box-7").connect()
    row = 'tr[data-device="cam-box-7"] td.conn'
    with live_dashboard(fleet_cfg) as base, page_for(chromium) as page:
        sign_in(page, base, "viewer")
        with Heartbeat(dev) as hb:
            page.goto(base + "/")
            page.wait_for_selector(f"{row}:has-text('online')", timeout=10_000)
            shot(page, "03-fleet-online")
            hb.stop()
            silent_since = time.monotonic()
        # No reload: the page refreshes itself (htmx, every refresh_s). The device is still
        # connected, so only the heartbeat rule can turn it offline; not before the timeout,
        # and (the wait's own limit) within a few refreshes after it.
        timeout = fleet_cfg.fleet.heartbeat_timeout_s
        page.wait_for_selector(f"{row}:has-text('offline')", timeout=int((timeout + 10) * 1000))
        took = time.monotonic() - silent_since
        assert took >= timeout - 1.0, f"offline after {took:.1f} s of silence, before the {timeout} s timeout"
        assert "heartbeat timeout 3 s" in page.inner_text(row)
        assert page.inner_text("#count-offline") == "1"
        shot(page, "04-fleet-offline")
        # and the broker's last-will path: the connection drops, the retained status says why
        dev.kill()
        page.wait_for_selector(f"{row}:has-text('last-will')", timeout=15_000)
        page.click("a:text('cam-box-7')")
        page.wait_for_selector("h1:has-text('Device cam-box-7')")
        assert page.locator('svg[aria-label="CPU"]').count() == 1
        shot(page, "05-device")


def test_acknowledge_an_alert(chromium, fleet_cfg) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    seed_fleet(fleet_cfg, devices=2, hours=1, hot=(0,))
    alerts = AlertStore(fleet_cfg.paths.fleet_db)
    a, _ = alerts.raise_finding(
        Finding("overheating", "park1", "box0000 at 85 °C (limit 80 °C)", device="box0000"),
        "critical",
        "analysis",
    )
    with live_dashboard(fleet_cfg) as base, page_for(chromium) as page:
        sign_in(page, base, "engineer")
        page.goto(base + "/alerts")
        row = page.locator(f'tr[data-alert="{a.id}"]')
        assert "critical" in row.inner_text() and "✖" in row.inner_text()  # symbol + word, not colour alone
        shot(page, "06-alerts-open")
        row.get_by_label("Comment").fill("fan replaced, watching")
        row.get_by_role("button", name="Acknowledge").click()
        page.wait_for_selector("p.flash:has-text('acknowledged')")
        assert page.locator(f'tr[data-alert="{a.id}"]').count() == 0  # gone from "open"
        page.goto(base + "/alerts?state=acknowledged")
        assert "fan replaced, watching" in page.locator(f'tr[data-alert="{a.id}"]').inner_text()
        shot(page, "07-alerts-acknowledged")
    stored = alerts.get(a.id)
    assert (stored.state, stored.acked_by) == ("acknowledged", "engineer")
    assert AuditLog(fleet_cfg.paths.registry_db).entries(subject=f"alert:{a.id}")[0].actor == "engineer"


def test_label_a_snapshot_and_see_it_counted(chromium, fleet_cfg) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.dashutil import write_snapshot_jpeg

    seed_fleet(fleet_cfg, devices=2, hours=1, predictions=10)
    write_snapshot_jpeg(fleet_cfg, "box0000-snap-1")
    with live_dashboard(fleet_cfg) as base, page_for(chromium) as page:
        sign_in(page, base, "engineer")
        page.goto(base + "/quality")
        assert page.inner_text("#labels-total").startswith("0 labelled frames")
        page.goto(base + "/labelling")
        card = page.locator('article[data-snapshot="box0000-snap-1"]')
        # the image really loads: it is lazy, so the page's load event does not wait for it;
        # decode() settles once it has loaded (or failed, which counts as width 0)
        width = card.locator("img").evaluate("i => i.decode().then(() => i.naturalWidth, () => 0)")
        assert width > 0
        assert page.locator('article[data-snapshot^="box0001"]').count() == 0  # park2 does not allow it
        shot(page, "08-labelling")
        card.get_by_role("button", name="dog").click()
        page.wait_for_selector("p.flash:has-text('as dog')")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Drift & quality").click()
        assert page.inner_text("#labels-total").startswith("1 labelled frame")
        shot(page, "09-quality")


def test_role_checks_in_the_browser(chromium, fleet_cfg) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from cloud.registry.models import ModelRecord

    with Registry(fleet_cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version="v9",
                gate_passed=True,
                package_dir="",
                tarball="",
                tarball_sha256="",
                metrics={"accuracy": 0.97},
            )
        )
    with live_dashboard(fleet_cfg) as base:
        for role in ("viewer", "engineer"):
            with page_for(chromium) as page:
                sign_in(page, base, role)
                page.goto(base + "/models/v9")
                assert page.locator("#decide-form").count() == 0
                assert "Only approvers decide" in page.inner_text("main")
                # even a hand-made request with this session's valid token is refused by role
                token = page.get_attribute('meta[name="csrf-token"]', "content")
                r = page.request.post(
                    base + "/models/v9/decide",
                    form={"decision": "approve", "stage": "staging", "reason": "sneaky", "csrf_token": token},
                )
                assert r.status == 403 and "may not approve" in r.text()
        with page_for(chromium) as page:
            sign_in(page, base, "approver")
            page.goto(base + "/models/v9")
            # a forged form: same fields, no CSRF token (as another site would post it)
            page.evaluate("""() => {
                const f = document.createElement('form');
                f.method = 'post'; f.action = '/models/v9/decide';
                for (const [k, v] of [['decision', 'approve'], ['stage', 'staging'], ['reason', 'forged']]) {
                    const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
                }
                document.body.appendChild(f); f.submit();
            }""")
            page.wait_for_selector("h1:has-text('Form refused')")
            shot(page, "10-forged-form-refused")
    assert Registry(fleet_cfg.paths.registry_db).get_model("v9").stage == "candidate"
    assert not [e for e in AuditLog(fleet_cfg.paths.registry_db).entries() if e.action == "approve"]


def test_tablet_layout_and_keyboard(chromium, fleet_cfg) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    seed_fleet(fleet_cfg, devices=6, hours=1)
    pages = (
        "/",
        "/devices/box0000",
        "/rollouts",
        "/models",
        "/quality",
        "/alerts",
        "/labelling",
        "/lineage",
        "/audit",
    )
    with live_dashboard(fleet_cfg) as base:
        for width, height in ((1280, 800), (820, 1180)):
            with page_for(chromium, width=width, height=height) as page:
                sign_in(page, base, "viewer")
                for path in pages:  # nothing wider than the screen: no sideways scrolling of the page
                    page.goto(base + path)
                    wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    assert wide <= 1, f"{path} is {wide} px too wide at {width} px"
    with live_dashboard(fleet_cfg) as base, page_for(chromium, width=820, height=1180) as page:
        sign_in(page, base, "viewer")
        page.goto(base + "/")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        # reach a device link with the keyboard alone
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.getAttribute('href') || ''").startswith("/devices/"):
                break
        else:
            raise AssertionError("no device link reachable with Tab")
        page.keyboard.press("Enter")
        page.wait_for_selector("h1:has-text('Device')")
        shot(page, "11-tablet-device")
