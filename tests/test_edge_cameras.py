"""Camera readers against real sources: a GStreamer RTSP server, an HTTP MJPEG server, folders."""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cameras import Camera, backoff_delay
from edge.config import CameraConfig
from tests.rtsp_server import RtspServer, check_prerequisites, free_port


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def drain(cam: Camera, seconds: float) -> int:
    """Act as the inference loop: take frames for ``seconds`` from the first; returns how many.

    The clock starts at the first frame, so thread start and the first open are not counted
    against the source's rate on a slow machine.
    """
    first = time.monotonic() + 10
    while cam.take() is None:
        if time.monotonic() > first:
            return 0
        time.sleep(0.005)
    n = 1
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cam.take() is not None:
            n += 1
        time.sleep(0.005)
    return n


@pytest.fixture(scope="module")
def rtsp_ready() -> None:
    problem = check_prerequisites()
    if problem:
        pytest.fail(problem, pytrace=False)


class _Mjpeg(http.server.BaseHTTPRequestHandler):
    mode = "mjpeg"

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        if self.mode == "garbage":
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            rng = np.random.default_rng(0)
            try:
                for _ in range(400):
                    self.wfile.write(
                        rng.integers(0, 255, 65536, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
                    )
            except OSError:
                pass
            return
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(10_000):
                img = np.full((480, 640, 3), 40, np.uint8)
                cv2.putText(img, str(i), (50, 240), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 8)
                jpg = cv2.imencode(".jpg", img)[1].tobytes()
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpg)).encode()
                    + b"\r\n\r\n"
                    + jpg
                    + b"\r\n"
                )
                time.sleep(0.05)
        except OSError:
            pass


def _serve(mode: str) -> Iterator[str]:
    handler = type(f"H{mode}", (_Mjpeg,), {"mode": mode})
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/video.mjpg"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def mjpeg_url() -> Iterator[str]:
    yield from _serve("mjpeg")


@pytest.fixture
def garbage_url() -> Iterator[str]:
    yield from _serve("garbage")


def test_backoff_doubles_and_caps() -> None:
    got = [backoff_delay(n, 1.0, 8.0, jitter=0) for n in range(1, 7)]
    assert got == [1, 2, 4, 8, 8, 8]


def test_a_camera_down_for_days_keeps_retrying(tmp_path: Path) -> None:
    """~1000 failures (8 h at a 30 s cap) used to overflow ``2**failures`` and end the reader."""
    cam = Camera(
        CameraConfig(
            id="old",
            kind="folder",
            url=str(tmp_path / "missing"),
            reconnect_initial_s=0.05,
            reconnect_max_s=0.1,
        )
    )
    cam.failures = 2000  # as after days of retrying
    cam.start()
    try:
        assert wait_for(lambda: cam.reconnects >= 3, 10), (cam.reconnects, cam.last_error)
        assert cam.state == "offline"  # at the slowest pace, still trying
    finally:
        cam.stop()


def test_folder_camera_reads_every_image_on_demand_with_fps_cap(pets_sample: Path) -> None:
    cam = Camera(CameraConfig(id="f", kind="folder", url=str(pets_sample / "cat"), fps=10))
    cam.start()
    try:
        n = drain(cam, 1.5)
        assert 12 <= n <= 17  # ~10 fps for 1.5 s, plus the first frame
        assert cam.state == "streaming"
        assert cam.dropped == 0  # on-demand sources never drop
    finally:
        cam.stop()


def test_folder_of_garbage_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    for url, msg in ((tmp_path / "bad", "decodes"), (tmp_path / "missing", "does not exist")):
        cam = Camera(CameraConfig(id="g", kind="folder", url=str(url), reconnect_initial_s=0.2))
        cam.start()
        try:
            # The error is recorded a moment before the state changes to reconnecting.
            assert wait_for(
                lambda: cam.last_error is not None and cam.state in ("reconnecting", "offline"),  # noqa: B023
                5,
            ), (cam.state, cam.last_error)
            assert msg in (cam.last_error or "")
        finally:
            cam.stop()


def test_rtsp_camera_reconnects_after_the_server_dies(rtsp_ready: None) -> None:
    server = RtspServer().start()
    cam = Camera(
        CameraConfig(
            id="r",
            kind="rtsp",
            url=server.url,
            fps=None,
            reconnect_initial_s=0.5,
            reconnect_max_s=2,
            stall_after_s=3,
        )
    )
    cam.start()
    try:
        assert wait_for(lambda: cam.frames > 10, 20), cam.last_error
        assert cam.state == "streaming"
        f = cam.take()
        assert f is not None and f.image.shape == (480, 640, 3)
        server.kill()
        assert wait_for(lambda: cam.state in ("reconnecting", "offline"), 15)
        before = cam.frames
        server.start()  # same port and mount: the camera comes back
        assert wait_for(lambda: cam.frames > before + 10 and cam.state == "streaming", 30), cam.last_error
        assert cam.reconnects >= 1
        assert cam.dropped > 0  # live source at 15 fps, nobody took the frames: counted as dropped
    finally:
        cam.stop()
        server.kill()


def test_dead_cameras_do_not_slow_a_live_one(pets_sample: Path) -> None:
    dead_rtsp = CameraConfig(
        id="d1", kind="rtsp", url=f"rtsp://127.0.0.1:{free_port()}/x", reconnect_initial_s=0.2
    )
    # 10.255.255.1 is unroutable: connect() hangs until the timeout
    hanging = CameraConfig(id="d2", kind="mjpeg", url="http://10.255.255.1:81/v.mjpg", stall_after_s=2)
    good = CameraConfig(id="ok", kind="folder", url=str(pets_sample / "dog"), fps=20)
    cams = [Camera(c) for c in (dead_rtsp, hanging, good)]
    for c in cams:
        c.start()
    try:
        n = drain(cams[2], 2.0)
        assert n >= 30  # ~20 fps despite two dead cameras
        assert cams[0].state in ("reconnecting", "offline")
        assert "cannot open" in (cams[0].last_error or "")
    finally:
        for c in cams:
            c._stop.set()
        for c in cams:
            c.stop(timeout=1)


def test_mjpeg_camera_streams(mjpeg_url: str) -> None:
    cam = Camera(CameraConfig(id="m", kind="mjpeg", url=mjpeg_url, fps=None))
    cam.start()
    try:
        assert wait_for(lambda: cam.frames >= 5, 10), cam.last_error
        frame = cam.take()
        assert frame is not None and frame.image.shape == (480, 640, 3)
        assert cam.telemetry().state == "streaming"
    finally:
        cam.stop()


def test_a_stream_of_garbage_is_an_error_not_a_crash(garbage_url: str) -> None:
    cam = Camera(CameraConfig(id="g", kind="mjpeg", url=garbage_url, reconnect_initial_s=0.3))
    cam.start()
    try:
        assert wait_for(lambda: cam.last_error is not None, 20)
        assert "JPEG" in (cam.last_error or "") or "closed" in (cam.last_error or "")
        assert cam.frames == 0
        assert cam._thread is not None and cam._thread.is_alive()  # still retrying
    finally:
        cam.stop()


def test_video_file_camera_loops(tmp_path: Path, pets_sample: Path) -> None:
    from tests.rtsp_server import make_clip

    clip = make_clip(sorted((pets_sample / "cat").glob("*.jpg"))[:3], tmp_path / "c.mp4", 0.3, 10)
    cam = Camera(CameraConfig(id="v", kind="file", url=str(clip), fps=None, loop=True))
    cam.start()
    try:
        n = drain(cam, 2.0)
        assert n > 12  # the ~9-frame clip played more than once
        assert cam.state == "streaming"
    finally:
        cam.stop()
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"]  # RTSP over TCP by default
