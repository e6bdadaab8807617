"""The local status page through real HTTP: a running daemon behind uvicorn, and TestClient."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge.daemon import Daemon
from edge.status.app import create_app
from shared.broker import EmbeddedBroker
from tests.edge_fixtures import edge_config, make_tiny_package

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def daemon(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Daemon]:
    monkeypatch.setenv("PW_STATUS_TOKEN", TOKEN)
    cfg = edge_config(
        tmp_path,
        broker,
        [
            {"id": "gate", "kind": "folder", "url": str(pets_sample / "dog"), "fps": 10},
            {"id": "dead", "kind": "rtsp", "url": "rtsp://user:pw@127.0.0.1:9/x", "reconnect_initial_s": 0.2},
        ],
        make_tiny_package(tmp_path / "pkg", "v3"),
        status_page={"enabled": True, "port": 0, "token": {"env": "PW_STATUS_TOKEN"}},
    )
    d = Daemon(cfg).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (d.engine and d.engine.classified >= 3 and d.mqtt.connected):
        time.sleep(0.05)
    assert d.engine is not None and d.engine.classified >= 3, "the daemon classified nothing in 10 s"
    assert d.mqtt.connected, "the daemon did not connect to the broker in 10 s"
    yield d
    d.stop()


def test_served_page_needs_the_token_and_shows_everything(daemon: Daemon) -> None:
    url = daemon.status_url
    assert url is not None
    assert httpx.get(f"{url}/healthz").json() == {"ok": True}  # open
    for path in ("/", "/api/status", "/metrics", "/cameras/gate/frame.jpg"):
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    bad = httpx.get(url + "/", headers={"Accept": "text/html"})
    assert bad.status_code == 401 and "token" in bad.text
    page = httpx.get(url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "/?token=&lt;token&gt;" in page.text  # shown, not eaten as a tag
    h = {"Authorization": f"Bearer {TOKEN}"}
    page = httpx.get(url + "/", headers=h)
    assert page.status_code == 200
    html = page.text
    for needle in (
        "gate",
        "dead",
        "v3",
        "manifest digests ok",
        "connected",
        "Recent predictions",
        "Recent errors",
        "camera dead is",
        "user:***@",
    ):
        assert needle in html, needle
    assert re.search(r"up \d+ s<", html), "a fresh daemon's uptime reads in seconds, not '0.0 h'"
    assert "pw@" not in html  # camera passwords never shown
    api = httpx.get(url + "/api/status", headers=h).json()
    assert api["model"]["version"] == "v3" and api["broker"]["connected"] is True
    assert api["verdict"]["level"] == "bad"  # a camera is down
    assert {c["id"]: c["state"] for c in api["cameras"]}["gate"] == "streaming"
    assert api["recent_predictions"] and "outbox" in api
    jpg = httpx.get(url + "/cameras/gate/frame.jpg", headers=h)
    img = cv2.imdecode(np.frombuffer(jpg.content, np.uint8), cv2.IMREAD_COLOR)
    assert jpg.headers["content-type"] == "image/jpeg" and img is not None and img.shape[2] == 3
    assert httpx.get(url + "/cameras/dead/frame.jpg", headers=h).status_code == 404
    metrics = httpx.get(url + "/metrics", headers=h).text
    assert 'parkwatch_edge_camera_state{camera="gate",state="streaming"} 1' in metrics
    assert "parkwatch_edge_outbox_backlog " in metrics and "# TYPE parkwatch_edge_up gauge" in metrics
    families: list[str] = []
    for line in metrics.splitlines():  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if not families or families[-1] != name:
                families.append(name)
    # the text format wants each family in one block, also with two cameras (gate and dead)
    assert len(families) == len(set(families)), families


def test_token_link_becomes_a_cookie(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.status_url or "", follow_redirects=False) as c:
        r = c.get(f"/?token={TOKEN}", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert c.get("/", headers={"Accept": "text/html"}).status_code == 200  # cookie now


def test_factory_takes_its_dependencies_and_frame_drawing() -> None:
    class Fake:  # the page only needs snapshot() and camera_view(); here a minimal snapshot
        def snapshot(self) -> dict[str, object]:
            return {"healthy": False}

        def camera_view(self, camera_id: str) -> None:
            return None

    client = TestClient(create_app(Fake(), "t"))
    assert client.get("/healthz").status_code == 503
    assert client.get("/cameras/x/frame.jpg", headers={"Authorization": "Bearer t"}).status_code == 404
    with pytest.raises(ValueError):
        create_app(Fake(), "")


def test_generated_token_when_none_configured(tmp_path: Path, pets_sample: Path) -> None:
    cfg = edge_config(tmp_path, None, [], None, status_page={"enabled": True, "port": 0})
    with Daemon(cfg) as d:
        tok_file = cfg.state_dir / "status-token"
        assert tok_file.read_text().strip() == d.status_token
        assert oct(tok_file.stat().st_mode & 0o777) == "0o600"
        r = httpx.get(f"{d.status_url}/api/status", headers={"Authorization": f"Bearer {d.status_token}"})
        assert r.status_code == 200 and r.json()["model"] is None


def test_unreadable_token_fails_start_clearly_and_stops_what_started(
    tmp_path: Path, pets_sample: Path
) -> None:
    from shared.errors import SecretError

    cfg = edge_config(
        tmp_path,
        None,
        [{"id": "c", "kind": "folder", "url": str(pets_sample / "cat")}],
        None,
        status_page={"enabled": True, "port": 0, "token": {"file": str(tmp_path / "no-such-token")}},
    )
    d = Daemon(cfg)
    with pytest.raises(SecretError, match="cannot read secret file"):
        d.start()
    assert d.engine is not None and not d.engine.alive
    assert all(c._thread is None or not c._thread.is_alive() for c in d.cameras)
    assert not d.mqtt.connected
