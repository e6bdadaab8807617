"""The box and its technician (issue 15, part C): real broker, real HTTP and RTSP cameras, the real
status page app and CLI. Each test fails on the code before its fix."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge.cameras import Camera
from edge.config import CameraConfig
from edge.daemon import Daemon
from edge.events import RecentDeltas
from edge.mqttlink import MqttLink
from edge.status.app import create_app, verdict
from shared.broker import EmbeddedBroker, free_port
from shared.config import MqttConfig
from tests.edge_fixtures import edge_config, make_tiny_package
from tests.rtsp_server import RtspServer, check_prerequisites

REPO = Path(__file__).resolve().parent.parent
PARKWATCH = str(Path(sys.executable).parent / "parkwatch")
TOKEN = "field-token-for-tests"


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def jpeg(i: int) -> bytes:
    img = np.full((120, 160, 3), 40, np.uint8)
    cv2.putText(img, str(i), (10, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return bytes(cv2.imencode(".jpg", img)[1].tobytes())


class _Cam(http.server.BaseHTTPRequestHandler):
    """An HTTP camera: ``mode`` decides what GET returns."""

    mode = "stream"
    pace: ClassVar[list[float]] = [0.05]

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.mode == "401":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.end_headers()
            return
        self.send_response(200)
        if self.mode == "page":
            body = b"<!doctype html><title>IP Camera</title><h1>Login</h1>"
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        frozen = jpeg(0)
        try:
            for i in range(100_000):
                jpg = frozen if self.mode == "frozen" else jpeg(i)
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpg + b"\r\n")
                if self.mode == "gap" and i == 15:
                    time.sleep(3.0)  # one long pause, then a steady 5 fps
                time.sleep(0.02 if self.mode == "gap" and i < 15 else 0.2 if self.mode == "gap" else 0.05)
        except OSError:
            pass


class HttpCam:
    def __init__(self, mode: str, port: int = 0) -> None:
        handler = type(f"C{mode}", (_Cam,), {"mode": mode})
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", port), handler)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/video.mjpg"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def http_cam(request: pytest.FixtureRequest) -> Iterator[HttpCam]:
    cam = HttpCam(request.param)
    yield cam
    cam.close()


# -- 10: why the broker cannot be reached --------------------------------------------------------


def test_unreachable_broker_is_named_with_its_reason_on_page_and_in_log(
    tmp_path: Path, pets_sample: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens: connection refused
    cfg = edge_config(
        tmp_path,
        None,
        [{"id": "gate", "kind": "folder", "url": str(pets_sample / "cat"), "fps": 5}],
        make_tiny_package(tmp_path / "pkg"),
        mqtt={"port": port},
    )
    with caplog.at_level(logging.WARNING, logger="parkwatch"), Daemon(cfg) as d:
        assert wait_for(lambda: d.mqtt.last_error is not None, 15)
        want = f"cannot reach 127.0.0.1:{port}: connection refused"
        assert d.mqtt.last_error == want
        page = TestClient(create_app(d, TOKEN)).get("/", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert want in page and "never" in page
        assert any(want in w for w in verdict(d.snapshot())["warnings"])
    assert want in caplog.text


def test_broker_refusing_the_login_says_not_authorised(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "b", allow_anonymous=False).start()
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port, keepalive=5), "s", "d1")
    try:
        link.start()
        assert wait_for(lambda: link.last_error is not None, 15)
        assert link.last_error is not None
        assert link.last_error.startswith(f"cannot reach 127.0.0.1:{broker.port}: not authorised")
        assert not link.connected and link.failed_attempts >= 1
    finally:
        link.stop()
        broker.stop()


def test_connect_failures_are_told_apart() -> None:
    from edge.mqttlink import connect_failure

    assert connect_failure(ConnectionRefusedError(111, "Connection refused"))[0] == "connection refused"
    assert connect_failure(TimeoutError("timed out"))[0] == "timed out"
    assert connect_failure(socket.gaierror(-2, "Name or service not known"))[0] == "host name not found"
    link = MqttLink(MqttConfig(host="no-such-broker.invalid", port=1883, keepalive=5), "s", "d2")
    try:
        link.start()
        assert wait_for(lambda: link.last_error is not None, 30)
        assert link.last_error == "cannot reach no-such-broker.invalid:1883: host name not found"
    finally:
        link.stop()


# -- 11: the banner warns on recent events, not lifetime totals ---------------------------------------


def test_recent_deltas_forget_what_happened_before_the_window() -> None:
    r = RecentDeltas(window_s=600)
    assert r.observe("evicted", 330, now=0) == 0  # the baseline at start
    assert r.observe("evicted", 335, now=60) == 5
    assert r.observe("evicted", 335, now=400) == 5
    assert r.observe("evicted", 335, now=1000) == 0  # the five are older than 10 minutes now


def _snapshot(d: Daemon) -> dict[str, Any]:
    return d.snapshot()


def test_banner_is_green_with_old_totals_and_warns_on_recent_ones(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path
) -> None:
    cfg = edge_config(
        tmp_path,
        broker,
        [{"id": "gate", "kind": "folder", "url": str(pets_sample / "cat"), "fps": 5}],
        make_tiny_package(tmp_path / "pkg"),
    )
    with Daemon(cfg) as d:
        assert wait_for(lambda: d.mqtt.connected and d.engine is not None and d.engine.classified > 0, 15)
        snap = d.snapshot()
        snap["outbox"].update(evicted_total=330, write_errors=7)  # lifetime totals from long ago
        v = verdict(snap)
        assert v["level"] == "ok", v
        snap["recent"].update(evicted=3)
        v = verdict(snap)
        assert (
            v["level"] == "warn"
            and "3 prediction(s) evicted by the outbox bound in the last 10 min" in v["text"]
        )
        page = TestClient(create_app(d, TOKEN)).get("/", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert "All good" in page


# -- 12: /healthz fails without a model or without any camera ---------------------------------------


def test_healthz_fails_with_no_model_or_every_camera_down(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path
) -> None:
    dead = {
        "id": "dead",
        "kind": "rtsp",
        "url": f"rtsp://127.0.0.1:{free_port()}/x",
        "reconnect_initial_s": 0.2,
    }
    live = {"id": "gate", "kind": "folder", "url": str(pets_sample / "cat"), "fps": 5}
    cases = [
        ([live], None, ["model"]),
        ([dead], make_tiny_package(tmp_path / "pkg"), ["cameras"]),
        ([live, dead], make_tiny_package(tmp_path / "pkg2"), []),
    ]
    for n, (cams, model, failing) in enumerate(cases):
        cfg = edge_config(tmp_path / str(n), broker, cams, model)
        with Daemon(cfg) as d:
            client = TestClient(create_app(d, TOKEN))
            assert wait_for(lambda: d.engine is not None and d.healthy(), 10)
            if not failing:
                assert wait_for(lambda: client.get("/healthz").status_code == 200, 15)  # noqa: B023
                assert client.get("/healthz").json() == {"ok": True}
                continue
            assert wait_for(lambda: any(c.state == "streaming" for c in d.cameras) or cams[0] is not live, 10)  # noqa: B023
            r = client.get("/healthz")
            assert r.status_code == 503 and r.json() == {"ok": False, "failing": failing}, (n, r.json())


# -- 13: an MJPEG URL that is a web page ---------------------------------------------------------


@pytest.mark.parametrize("http_cam", ["page"], indirect=True)
def test_mjpeg_url_that_is_a_web_page_says_so_and_keeps_backing_off(http_cam: HttpCam) -> None:
    cam = Camera(
        CameraConfig(id="web", kind="mjpeg", url=http_cam.url, reconnect_initial_s=0.05, reconnect_max_s=0.4)
    )
    seen: set[str] = set()
    cam.start()
    try:

        def watch() -> bool:
            seen.add(cam.state)
            return cam.failures >= 4

        assert wait_for(watch, 20), (cam.failures, seen)
    finally:
        cam.stop()
    assert "streaming" not in seen  # no flip-flop: it never counted as connected
    assert "returned a web page (text/html)" in (cam.last_error or "")


# -- 14: a frozen camera is reconnected; fps restarts after a gap -----------------------------------


@pytest.mark.parametrize("http_cam", ["frozen"], indirect=True)
def test_a_camera_repeating_one_picture_is_reconnected(http_cam: HttpCam) -> None:
    cam = Camera(
        CameraConfig(id="ice", kind="mjpeg", url=http_cam.url, stall_after_s=1.0, reconnect_initial_s=0.1)
    )
    cam.start()
    try:
        assert wait_for(lambda: cam.reconnects >= 1, 20), (cam.state, cam.frames, cam.last_error)
        assert "only repeats of the same picture" in (cam.last_error or "")
        assert cam.repeated > 0
    finally:
        cam.stop()


@pytest.mark.parametrize("http_cam", ["gap"], indirect=True)
def test_fps_starts_afresh_after_a_gap(http_cam: HttpCam) -> None:
    cam = Camera(CameraConfig(id="gap", kind="mjpeg", url=http_cam.url, stall_after_s=10.0, fps=0))
    cam.start()
    try:
        assert wait_for(lambda: cam.frames >= 24, 30)
        fps = cam.telemetry().fps
    finally:
        cam.stop()
    # before: the 50 fps burst before the pause dominated the average for many frames (> 20)
    assert 0 < fps < 15, fps


# -- 15: test a camera from the command line; retry now from the status page -------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARKWATCH, "edge", *args, *(["--timeout", "20"] if args[:2] == ("camera", "test") else [])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_camera_test_tells_path_from_host_and_saves_a_frame(tmp_path: Path) -> None:
    if problem := check_prerequisites():
        pytest.fail(problem, pytrace=False)
    with RtspServer() as srv:
        ok = run_cli("camera", "test", srv.url, "--out", str(tmp_path / "f.jpg"), cwd=tmp_path)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "ok   reach" in ok.stdout and "640x480 frame saved" in ok.stdout
        saved = cv2.imread(str(tmp_path / "f.jpg"))
        assert saved is not None and saved.shape == (480, 640, 3)
        wrong_path = run_cli("camera", "test", srv.url + "-nope", "--json", cwd=tmp_path)
        assert wrong_path.returncode == 1
        report = json.loads(wrong_path.stdout)
        assert report["steps"][0]["ok"] and "RTSP 404" in report["steps"][1]["detail"]
        assert [st["name"] for st in report["steps"]] == ["reach", "reply"]
        assert "wrong path" in report["steps"][1]["detail"]
    dead = run_cli("camera", "test", f"rtsp://127.0.0.1:{free_port()}/cam1", cwd=tmp_path)
    assert (
        dead.returncode == 1
        and "FAIL reach  cannot reach" in dead.stdout
        and "connection refused" in dead.stdout
    )
    assert "reply" not in dead.stdout  # it stops at the first layer that fails


def test_camera_test_tells_a_missing_password_from_a_wrong_one(tmp_path: Path) -> None:
    if problem := check_prerequisites():
        pytest.fail(problem, pytrace=False)
    with RtspServer(auth=("viewer", "s3cret")) as srv:
        bare = run_cli("camera", "test", srv.url, cwd=tmp_path)
        assert bare.returncode == 1 and "RTSP 401" in bare.stdout and "put them in the URL" in bare.stdout
        with_creds = srv.url.replace("rtsp://", "rtsp://viewer:{}@")
        wrong = run_cli("camera", "test", with_creds.format("nope"), cwd=tmp_path)
        assert wrong.returncode == 1 and "the user or password in the URL is wrong" in wrong.stdout
        assert "nope" not in wrong.stdout and "viewer:***@" in wrong.stdout
        good = run_cli(
            "camera", "test", with_creds.format("s3cret"), "--out", str(tmp_path / "a.jpg"), cwd=tmp_path
        )
        assert good.returncode == 0 and "s3cret" not in good.stdout, good.stdout


@pytest.mark.parametrize("http_cam", ["401"], indirect=True)
def test_camera_test_explains_an_http_401(http_cam: HttpCam, tmp_path: Path) -> None:
    r = run_cli("camera", "test", http_cam.url.replace("http://", "http://admin:wrong@"), cwd=tmp_path)
    assert r.returncode == 1 and "HTTP 401" in r.stdout and "password" in r.stdout
    assert "wrong" not in r.stdout.replace("wrong path", "")  # the password is never printed


def test_retry_now_picks_a_returning_camera_up_at_once(tmp_path: Path, broker: EmbeddedBroker) -> None:
    port = free_port()
    cfg = edge_config(
        tmp_path,
        broker,
        [
            {
                "id": "door",
                "kind": "mjpeg",
                "url": f"http://127.0.0.1:{port}/video.mjpg",
                "reconnect_initial_s": 60,
            }
        ],
        make_tiny_package(tmp_path / "pkg"),
    )
    with Daemon(cfg) as d:
        cam = d.cameras[0]
        assert wait_for(lambda: cam.failures >= 1, 15)  # now waiting ~60 s before the next try
        client = TestClient(create_app(d, TOKEN))
        assert client.post("/cameras/door/retry").status_code == 401  # token needed
        assert (
            client.post("/cameras/nope/retry", headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            == 404
        )
        page = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert 'action="/cameras/door/retry"' in page
        server = HttpCam("stream", port)  # the power-cycled camera is back
        try:
            r = client.post("/cameras/door/retry", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.json() == {"ok": True, "retrying": True}
            assert wait_for(lambda: cam.state == "streaming", 20)
        finally:
            server.close()


# -- 17: config check refuses the untouched template and a URL of the wrong kind -------------------


def test_config_check_refuses_the_template_and_a_mismatched_url(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0ken-for-the-test\n")
    template = (REPO / "provisioning" / "edge.example.toml").read_text()
    template = template.replace("/etc/parkwatch/status-token", str(tmp_path / "token"))
    path = tmp_path / "edge.toml"
    path.write_text(template)
    r = run_cli("config", "check", str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key device.id" in r.stderr and "box-01" in r.stderr and "cameras[1].url" in r.stderr
    r = run_cli("config", "check", "--allow-placeholders", str(path), cwd=tmp_path)
    assert r.returncode == 0 and "warning: cameras[1].url" in r.stdout
    edited = template.replace('id = "box-01"', 'id = "box-07"').replace("CHANGE-ME", "s3cret")
    path.write_text(
        edited.replace("rtsp://viewer:s3cret@192.168.1.64:554/stream2", "http://192.168.1.64/video.mjpg")
    )
    r = run_cli("config", "check", str(path), cwd=tmp_path)
    assert r.returncode == 2 and "key cameras[1].url" in r.stderr and 'set kind = "mjpeg"' in r.stderr
    path.write_text(edited)
    assert run_cli("config", "check", str(path), cwd=tmp_path).returncode == 0
