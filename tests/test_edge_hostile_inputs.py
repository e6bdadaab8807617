"""Hostile cameras, files and packages against the real readers (issue 12, items 4 and 9).

Decompression bombs are refused from their header before a pixel is decoded, counted per camera
and shown; URL passwords never reach logs, telemetry or the status page; a package tarball never
writes more than its manifest declares; preprocessing metadata is bounded.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import logging
import socketserver
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from cloud.data.validate import check_file
from edge.cameras import Camera
from edge.config import CameraConfig
from edge.events import RecentErrors
from edge.preprocess import ImageError, decode_image, geometry
from shared.broker import EmbeddedBroker
from shared.images import ImageRefused, decode_capped, image_header
from shared.modelpkg import PreprocessSpec, build_manifest
from shared.pkgtar import TarRefused, extract_package
from shared.protocol import Telemetry, encode
from shared.redact import redact_text, redact_url
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.rtsp_server import RtspServer, check_prerequisites


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def jpeg(w: int, h: int, value: int = 90) -> bytes:
    img = np.full((h, w, 3), value, np.uint8)
    return bytes(cv2.imencode(".jpg", img)[1].tobytes())


def jpeg_bomb(w: int, h: int) -> bytes:
    """A tiny real JPEG whose start-of-frame is patched to declare ``w``x``h`` (the attack)."""
    data = bytearray(jpeg(8, 8))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 7] = h.to_bytes(2, "big")
    data[i + 7 : i + 9] = w.to_bytes(2, "big")
    return bytes(data)


def png_bomb(w: int, h: int) -> bytes:
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[16:20] = w.to_bytes(4, "big")
    data[20:24] = h.to_bytes(4, "big")
    return bytes(data)


# -- the pure header check ---------------------------------------------------------------------


def test_the_issues_bombs_are_refused_from_their_header() -> None:
    bomb = jpeg_bomb(12000, 12000)
    assert len(bomb) < 1000  # a few hundred bytes (the issue's was 333)
    assert image_header(bomb) is not None and image_header(bomb).width == 12000  # type: ignore[union-attr]
    with pytest.raises(ImageRefused) as e:
        decode_capped(bomb)
    assert e.value.kind == "too-many-pixels" and "12000x12000" in str(e.value)
    with pytest.raises(ImageRefused) as e:
        decode_capped(jpeg(2, 8192))  # a real 2x8192 JPEG (2.6 KB): its resize needed 800 MB
    assert e.value.kind == "bad-shape"
    with pytest.raises(ImageRefused) as e:
        decode_capped(png_bomb(30000, 30000))
    assert e.value.kind == "too-many-pixels"
    assert decode_capped(jpeg(640, 480)).shape == (480, 640, 3)


def test_preprocessing_refuses_a_frame_whose_resize_would_explode() -> None:
    """Cause of the 66 → 909 MB: the shorter-side resize of a 2x8192 frame makes 256x1048576."""
    spec = PreprocessSpec()
    with pytest.raises(ImageError, match="ratio is too extreme"):
        geometry(np.zeros((8192, 2, 3), np.uint8), spec)
    assert geometry(np.zeros((1080, 1920, 3), np.uint8), spec).shape == (224, 224, 3)
    with pytest.raises(ImageError, match="pixels"):
        decode_image(jpeg_bomb(12000, 12000), "golden/x.jpg")


def test_preprocess_metadata_is_bounded() -> None:
    for bad in ({"input_size": (0, 224)}, {"input_size": (100000, 224)}, {"resize_to": 0}, {"scale": 0}):
        with pytest.raises(ValidationError):
            PreprocessSpec.model_validate(bad)


# -- MJPEG, folder, RTSP: refused undecoded, counted per camera, shown -------------------------


class _Frames(http.server.BaseHTTPRequestHandler):
    frames: ClassVar[list[bytes]] = []
    content_type = "multipart/x-mixed-replace; boundary=frame"

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.end_headers()
        try:
            for i in range(2000):
                jpg = self.frames[i % len(self.frames)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpg + b"\r\n")
                time.sleep(0.02)
        except OSError:
            pass


def serve(frames: list[bytes], content_type: str | None = None) -> tuple[str, Callable[[], None]]:
    attrs: dict[str, object] = {"frames": frames}
    if content_type:
        attrs["content_type"] = content_type
    handler = type("H", (_Frames,), attrs)
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close() -> None:
        srv.shutdown()
        srv.server_close()

    return f"http://127.0.0.1:{srv.server_address[1]}/video.mjpg?user=admin&password=hunter2", close


@pytest.fixture
def bomb_stream() -> Iterator[str]:
    url, close = serve([jpeg_bomb(5000, 5000), jpeg(2, 8192), jpeg(320, 240, 10), jpeg(320, 240, 200)])
    yield url
    close()


def test_mjpeg_bombs_are_refused_counted_and_good_frames_still_flow(bomb_stream: str) -> None:
    cam = Camera(CameraConfig(id="spoof", kind="mjpeg", url=bomb_stream, fps=0))
    cam.start()
    try:
        got = []

        def taken() -> bool:
            f = cam.take()
            if f is not None:
                got.append(f.image.shape)
            return len(got) >= 4 and cam.refused["too-many-pixels"] >= 2 and cam.refused["bad-shape"] >= 2

        assert wait_for(taken, 20), (got, cam.refused)
        assert set(got) == {(240, 320, 3)}  # only the honest frames were decoded and delivered
        tel = cam.telemetry()
        assert tel.refused["too-many-pixels"] >= 2 and tel.refused["bad-shape"] >= 2
        assert cam.state == "streaming"
    finally:
        cam.stop()


def test_folder_bombs_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a-bomb.jpg").write_bytes(jpeg_bomb(12000, 12000))
    (tmp_path / "b-bomb.png").write_bytes(png_bomb(20000, 20000))
    (tmp_path / "c-ok.jpg").write_bytes(jpeg(64, 48))
    cam = Camera(CameraConfig(id="dir", kind="folder", url=str(tmp_path), fps=0))
    cam.start()
    try:
        assert wait_for(lambda: cam.take() is not None, 10)
        assert wait_for(lambda: cam.refused["too-many-pixels"] >= 2, 10)
        assert set(cam.refused) == {"too-many-pixels"}
    finally:
        cam.stop()


def test_rtsp_stream_larger_than_the_cap_is_refused_by_its_declared_size() -> None:
    if problem := check_prerequisites():
        pytest.fail(problem, pytrace=False)
    with RtspServer() as srv:  # 640x480 = 307,200 pixels
        cam = Camera(
            CameraConfig(id="big", kind="rtsp", url=srv.url, max_pixels=100_000, reconnect_initial_s=5)
        )
        cam.start()
        try:
            assert wait_for(lambda: cam.last_error is not None, 30), cam.state
            assert "640x480" in (cam.last_error or "") and "max_pixels" in (cam.last_error or "")
            assert cam.refused["too-many-pixels"] >= 1 and cam.frames == 0
        finally:
            cam.stop()


def test_data_lake_quarantines_pixel_bombs(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(jpeg_bomb(12000, 12000))
    got = check_file(str(bomb), min_side=32, max_bytes=10**6)
    assert got.problem is not None and got.problem[0] == "too-many-pixels"
    thin = tmp_path / "thin.png"
    thin.write_bytes(cv2.imencode(".png", np.zeros((40, 2000, 3), np.uint8))[1].tobytes())
    got = check_file(str(thin), min_side=32, max_bytes=10**6)
    assert got.problem is not None and got.problem[0] == "bad-shape"
    ok = tmp_path / "ok.jpg"
    ok.write_bytes(jpeg(640, 480))
    assert check_file(str(ok), min_side=32, max_bytes=10**6).problem is None


# -- password redaction --------------------------------------------------------------------------


def test_redaction_covers_user_info_and_query_secrets() -> None:
    assert redact_url("rtsp://admin:pa@ss@10.0.0.2:554/live") == "rtsp://admin:***@10.0.0.2:554/live"
    assert (
        redact_url("http://cam/video.mjpg?user=admin&password=hunter2&res=hd")
        == "http://cam/video.mjpg?user=admin&password=***&res=hd"
    )
    assert "s3cret" not in redact_url("http://cam/snap.cgi?PWD=s3cret&api_key=s3cret&Token=s3cret")
    assert "hunter2" not in redact_text("cannot open http://c/x?pass=hunter2 (rtsp://u:hunter2@h/p)")


def test_query_password_never_reaches_telemetry_status_or_log(caplog: pytest.LogCaptureFixture) -> None:
    url, close = serve([b"<html>login</html>"], content_type="text/html")
    cam = Camera(CameraConfig(id="web", kind="mjpeg", url=url, reconnect_initial_s=0.2))
    errors = RecentErrors()
    cam.on_error = errors.add
    try:
        with caplog.at_level(logging.WARNING, logger="parkwatch"):
            cam.start()
            assert wait_for(lambda: cam.last_error is not None, 10)
    finally:
        cam.stop()
        close()
    assert "password=***" in (cam.last_error or "")
    wire = json.dumps(cam.telemetry().model_dump())
    assert "hunter2" not in wire and "hunter2" not in json.dumps(errors.list())
    assert "hunter2" not in caplog.text


def test_daemon_log_filter_redacts_any_line() -> None:
    from edge.daemon import RedactingFilter

    rec = logging.LogRecord(
        "parkwatch.x", logging.INFO, __file__, 1, "opening %s", ("http://h/?password=zz",), None
    )
    RedactingFilter().filter(rec)
    assert "zz" not in rec.getMessage()


def test_new_telemetry_fields_stay_off_the_wire_while_empty() -> None:
    """An older cloud refuses unknown fields: schema 1 (what a box sends to a cloud that has not
    advertised schema 2) is the old form even with something lost or refused; schema 2 carries it."""
    base = dict(
        device="d",
        site="s",
        cpu_percent=1,
        memory_percent=1,
        disk_percent=1,
        uptime_process_s=1,
        uptime_system_s=1,
    )
    quiet = json.loads(encode(Telemetry.model_validate({**base, "cameras": {"c": {"state": "streaming"}}})))
    assert "lost_predictions" not in quiet and "refused" not in quiet["cameras"]["c"]
    cams = {"c": {"state": "streaming", "refused": {"bad-shape": 1}}}
    loud = {**base, "lost_predictions": 3, "cameras": cams}
    old_form = json.loads(encode(Telemetry.model_validate(loud)))
    assert old_form["schema"] == 1
    assert "lost_predictions" not in old_form and "refused" not in old_form["cameras"]["c"]
    back = json.loads(encode(Telemetry.model_validate({**loud, "schema": 2})))
    assert back["lost_predictions"] == 3 and back["cameras"]["c"]["refused"] == {"bad-shape": 1}


# -- package tarballs bounded by the manifest ------------------------------------------------------


def _package(tmp: Path) -> Path:
    pkg = tmp / "pkg"
    pkg.mkdir()
    (pkg / "model.onnx").write_bytes(b"x" * 1000)
    (pkg / "golden").mkdir()
    (pkg / "golden" / "a.jpg").write_bytes(jpeg(16, 16))
    (pkg / "manifest.json").write_text(build_manifest(pkg, "1.0").model_dump_json())
    return pkg


def _tar(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A gzip tarball; an int payload is that many zero bytes, streamed (compresses 1000:1)."""
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if isinstance(payload, int):
                info.size = payload
                tar.addfile(info, _Zeros(payload))
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def _files(pkg: Path) -> list[tuple[str, bytes | int]]:
    return [(p.relative_to(pkg).as_posix(), p.read_bytes()) for p in sorted(pkg.rglob("*")) if p.is_file()]


def test_a_good_tarball_unpacks(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    tarball = _tar(tmp_path / "ok.tar.gz", _files(pkg))
    m = extract_package(tarball, tmp_path / "out")
    assert m.model_version == "1.0" and (tmp_path / "out" / "model.onnx").read_bytes() == b"x" * 1000


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ([("aaa-padding.bin", 300 * 2**20)], "unlisted"),  # 0.3 MB compressed, 300 MB if written
        ([("model.onnx", 300 * 2**20)], "size-mismatch"),  # listed name, size the manifest denies
        ([("../escape", b"x")], "unsafe-path"),
    ],
)
def test_a_lying_tarball_is_refused_before_it_writes(
    tmp_path: Path, extra: list[tuple[str, bytes | int]], kind: str
) -> None:
    pkg = _package(tmp_path)
    members = [m for m in _files(pkg) if m[0] != "model.onnx" or kind != "size-mismatch"] + extra
    members.sort(key=lambda m: m[0] != "manifest.json")  # manifest first: the bomb comes after it
    tarball = _tar(tmp_path / "bomb.tar.gz", members)
    assert tarball.stat().st_size < 2**20
    out = tmp_path / "out"
    with pytest.raises(TarRefused) as e:
        extract_package(tarball, out)
    assert e.value.kind == kind, e.value
    assert not out.exists()  # refused before the bomb was written, and the partial folder removed


def test_a_tarball_without_manifest_or_with_a_huge_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TarRefused) as e:
        extract_package(_tar(tmp_path / "a.tar.gz", [("model.onnx", b"x")]), tmp_path / "o1")
    assert e.value.kind == "no-manifest"
    with pytest.raises(TarRefused) as e:
        extract_package(_tar(tmp_path / "b.tar.gz", [("manifest.json", 5 * 2**20)]), tmp_path / "o2")
    assert e.value.kind == "too-large"
    with pytest.raises(TarRefused) as e:
        extract_package(_garbage(tmp_path), tmp_path / "o3")
    assert e.value.kind == "bad-tar"


def _garbage(tmp: Path) -> Path:
    p = tmp / "garbage.tar.gz"
    p.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    return p


def test_the_updater_refuses_a_signed_bomb_tarball_before_writing_it(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    """Through the real release channel: even a tarball that TUF accepts (signed, right hash)
    cannot make the box write more than its manifest declares."""
    from cloud.registry.models import ModelRecord
    from cloud.registry.store import Registry
    from tests.release_support import PASSING_METRICS, Setup, make_version

    s = Setup(tmp_path, broker, baseline_package)
    try:
        pkg = make_version(baseline_package, tmp_path / "bomb-src", "3.0.0")
        members = sorted(_files(pkg), key=lambda m: m[0] != "manifest.json")
        members.append(("zz-padding.bin", 200 * 2**20))  # 200 MB of zeros, ~0.2 MB gzipped
        tarball = _tar(tmp_path / "3.0.0.tar.gz", members)
        real = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file())
        assert tarball.stat().st_size < real + 2**20  # the padding adds well under 1 MB shipped
        with Registry(s.cfg.paths.registry_db) as reg:
            reg.register_model(
                ModelRecord(
                    version="3.0.0",
                    gate_passed=True,
                    metrics=PASSING_METRICS,
                    package_dir=str(pkg),
                    tarball=str(tarball),
                    tarball_sha256="",
                )
            )
        ch = s.ch
        assert ch is not None
        ch.approve("3.0.0", "staging", "qa-anna", "bomb")
        ch.rollout("3.0.0", "staging", "eng-bob", "bomb")
        assert s.updater.check_once() == "failed"
        reason = s.host.states[-1].reason or ""
        assert "zz-padding.bin" in reason and "not listed in the manifest" in reason, reason
        models = s.ecfg.state_dir / "updater" / "models"
        written = sum(p.stat().st_size for p in models.rglob("*") if p.is_file())
        assert written < 50 * 2**20 and not (models / ".3.0.0.unpacking").exists()
        current = s.host.model_slot.current
        assert current is not None and current.version == "1.0.0"
    finally:
        s.close()
