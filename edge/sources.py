"""Frame sources: the part of a camera that talks to a device, a stream, a file or a folder.

Each ``open``/``read`` is bounded in time (OpenCV/FFmpeg timeouts, socket timeouts), because a
reader blocked forever could never reconnect. A source raises :class:`CameraError` with a
message a technician can act on; the :class:`~edge.cameras.Camera` around it retries.
"""

from __future__ import annotations

import http.client
import os
import urllib.parse
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.config import CameraConfig
from edge.errors import CameraError
from shared.images import ImageRefused, check_size, decode_capped
from shared.redact import redact_text, redact_url

__all__ = ["FrameSource", "make_source", "redact_text", "redact_url"]

U8 = npt.NDArray[np.uint8]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# OpenCV would print a WARN line to stderr on every failed reconnect; our own log says it better.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

# FFmpeg itself would print "[tcp @ …] Connection refused" to stderr on every retry as well.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL

# RTSP over TCP: UDP loses packets on busy LANs and shows as smeared frames.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


#: a folder image above this is not read at all (the pixel cap then guards the decode)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: consecutive refused or undecodable MJPEG frames before the connection is dropped
MAX_BAD_RUN = 20


def http_hint(status: int) -> str:
    """What an HTTP error status from a camera usually means, for the technician."""
    return {
        401: ": the camera wants a user and password (put them in the URL: http://user:pass@host/...)",
        403: ": the user in the URL may not view the stream (check its rights in the camera's settings)",
        404: ": wrong path: the camera has no stream at this URL (see its manual for the MJPEG path)",
    }.get(status, "")


def mjpeg_content_problem(content_type: str | None) -> str | None:
    """None if ``content_type`` can be an MJPEG stream; else what the URL returned instead.

    Why: a camera's web page answers 200 too. Taken for a stream, it "connected" and failed
    about once a second for ever; now the technician reads what the URL is."""
    if not content_type:
        return None  # some cameras send no header; the frames will tell
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct.startswith("multipart/") or ct in ("application/octet-stream", "video/x-motion-jpeg"):
        return None
    if ct in ("text/html", "application/xhtml+xml"):
        return (
            "returned a web page (text/html), not an MJPEG stream: this is the camera's web "
            "interface; use its stream URL (often /video.mjpg, /mjpg/video.mjpg or /videostream.cgi)"
        )
    if ct == "image/jpeg":
        return (
            "returned a single JPEG (image/jpeg): this is a snapshot URL, not a stream; use the "
            "camera's MJPEG stream URL (multipart/x-mixed-replace)"
        )
    return f"returned {ct}, not an MJPEG stream (multipart/x-mixed-replace)"


class FrameSource(ABC):
    #: a live source produces frames whether or not we read them (stale ones are dropped);
    #: a non-live one (file, folder) gives the next frame only when asked.
    live = True
    #: frames refused before decoding, by kind (shared.images); the Camera replaces this with
    #: its own counter so the counts outlive reconnects
    refused: Counter[str]

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> U8 | None:
        """The next BGR frame; None at the end of a file or folder. Raises CameraError on failure."""

    @abstractmethod
    def close(self) -> None: ...


class CvSource(FrameSource):
    """RTSP, USB and video files through OpenCV (FFmpeg / V4L2 backends)."""

    def __init__(self, cfg: CameraConfig, timeout_s: float) -> None:
        self.cfg = cfg
        self.timeout_ms = int(timeout_s * 1000)
        self.cap: cv2.VideoCapture | None = None
        self.live = cfg.kind != "file"
        self.refused = Counter()

    def _target(self) -> tuple[str | int, int]:
        url = self.cfg.url
        if self.cfg.kind == "usb":
            if url.isdigit():
                return int(url), cv2.CAP_V4L2
            return url, cv2.CAP_V4L2
        if self.cfg.kind == "file" and not Path(url).is_file():
            raise CameraError(f"camera {self.cfg.id}: video file {url} does not exist")
        return url, cv2.CAP_FFMPEG

    def open(self) -> None:
        target, backend = self._target()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.timeout_ms,
        ]
        cap = cv2.VideoCapture(target, backend, params)
        if not cap.isOpened():
            cap.release()
            hint = {
                "rtsp": "check the URL, user/password in it, and that the camera is reachable (ping it)",
                "usb": "check the device exists (ls /dev/video*) and the parkwatch user is in group 'video'",
                "file": "check the file is a video FFmpeg can read",
                "mjpeg": "check the URL in a browser",
                "folder": "",
            }[self.cfg.kind]
            raise CameraError(f"camera {self.cfg.id}: cannot open {redact_url(self.cfg.url)}: {hint}")
        if self.cfg.kind == "usb":
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        # The stream's declared size, before any frame is decoded into memory we keep.
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w > 0 and h > 0:
            try:
                self._check(w, h)
            except CameraError:
                cap.release()
                raise
        self.cap = cap

    def _check(self, w: int, h: int) -> None:
        try:
            check_size(w, h, self.cfg.max_pixels, source=f"camera {self.cfg.id}: {redact_url(self.cfg.url)}")
        except ImageRefused as e:
            self.refused[e.kind] += 1
            raise CameraError(
                f"{e} (raise [[cameras]] max_pixels if this camera really is that large)"
            ) from e

    def read(self) -> U8 | None:
        if self.cap is None:
            raise CameraError(f"camera {self.cfg.id}: not open")
        ok, frame = self.cap.read()
        if not ok or frame is None:
            if self.cfg.kind == "file":
                return None
            raise CameraError(f"camera {self.cfg.id}: stream ended or timed out")
        self._check(frame.shape[1], frame.shape[0])  # a stream may change size mid-way
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class FolderSource(FrameSource):
    """Cycles through the image files of a folder (sorted, recursively): demos and tests."""

    live = False

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.files: list[Path] = []
        self.pos = 0
        self.bad_files = 0
        self.refused = Counter()

    def open(self) -> None:
        root = Path(self.cfg.url)
        if not root.is_dir():
            raise CameraError(f"camera {self.cfg.id}: folder {root} does not exist")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise CameraError(f"camera {self.cfg.id}: folder {root} holds no .jpg/.png images")
        self.pos = 0

    def read(self) -> U8 | None:
        tried = 0
        while self.pos < len(self.files):
            p = self.files[self.pos]
            self.pos += 1
            try:
                with p.open("rb") as fh:
                    data = fh.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    raise ImageRefused("too-large", f"{p} is larger than {MAX_FILE_BYTES} bytes")
                return decode_capped(data, self.cfg.max_pixels, source=str(p))
            except ImageRefused as e:
                self.refused[e.kind] += 1
            except OSError:
                pass
            self.bad_files += 1
            tried += 1
            if tried >= len(self.files):
                raise CameraError(
                    f"camera {self.cfg.id}: no file in {redact_url(self.cfg.url)} decodes as an image"
                )
        return None

    def close(self) -> None:
        self.files = []


class MjpegSource(FrameSource):
    """HTTP ``multipart/x-mixed-replace`` MJPEG (most IP cameras' "video.mjpg" URL).

    Parsed here rather than through FFmpeg so timeouts and garbage are under our control:
    JPEGs are cut out of the byte stream at their start/end markers, whatever the boundary.
    """

    MAX_FRAME_BYTES = 8 * 1024 * 1024

    def __init__(self, cfg: CameraConfig, timeout_s: float) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.conn: http.client.HTTPConnection | None = None
        self.resp: http.client.HTTPResponse | None = None
        self.buf = bytearray()
        self.bad_frames = 0
        self._bad_run = 0
        self.refused = Counter()
        self.last_refusal: str | None = None

    def open(self) -> None:
        u = urllib.parse.urlsplit(self.cfg.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise CameraError(f"camera {self.cfg.id}: {redact_url(self.cfg.url)} is not an http(s) URL")
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=self.timeout_s)
        headers = {}
        if u.username:
            import base64

            cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise CameraError(f"camera {self.cfg.id}: cannot connect to {u.hostname}:{u.port}: {e}") from e
        if resp.status != 200:
            conn.close()
            raise CameraError(
                f"camera {self.cfg.id}: HTTP {resp.status} {resp.reason} from {redact_url(self.cfg.url)}"
                + http_hint(resp.status)
            )
        if problem := mjpeg_content_problem(resp.getheader("Content-Type")):
            conn.close()
            raise CameraError(f"camera {self.cfg.id}: {redact_url(self.cfg.url)} {problem}")
        self.conn, self.resp, self.buf = conn, resp, bytearray()

    def read(self) -> U8 | None:
        if self.resp is None:
            raise CameraError(f"camera {self.cfg.id}: not open")
        while True:
            start = self.buf.find(b"\xff\xd8")
            if start >= 0:
                end = self.buf.find(b"\xff\xd9", start + 2)
                if end >= 0:
                    jpg = bytes(self.buf[start : end + 2])
                    del self.buf[: end + 2]
                    try:
                        # the header's size is checked before a pixel is decoded (JPEG bombs)
                        img = decode_capped(jpg, self.cfg.max_pixels, source=f"camera {self.cfg.id}: frame")
                    except ImageRefused as e:
                        self.refused[e.kind] += 1
                        self.last_refusal = str(e)
                        self.bad_frames += 1
                        self._bad_run += 1
                        if self._bad_run >= MAX_BAD_RUN:
                            raise CameraError(
                                f"camera {self.cfg.id}: {redact_url(self.cfg.url)}: {MAX_BAD_RUN} frames "
                                f"in a row refused; last: {self.last_refusal}"
                            ) from e
                        continue
                    self._bad_run = 0
                    return img
            elif len(self.buf) > 2:
                del self.buf[:-2]
            if len(self.buf) > self.MAX_FRAME_BYTES:
                raise CameraError(
                    f"camera {self.cfg.id}: {redact_url(self.cfg.url)} sends no JPEG frames (garbage?)"
                )
            try:
                chunk = self.resp.read1(65536)
            except OSError as e:
                raise CameraError(f"camera {self.cfg.id}: read failed: {e}") from e
            if not chunk:
                raise CameraError(f"camera {self.cfg.id}: {redact_url(self.cfg.url)} closed the stream")
            self.buf += chunk

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = self.resp = None


def make_source(cfg: CameraConfig, timeout_s: float) -> FrameSource:
    if cfg.kind == "folder":
        return FolderSource(cfg)
    if cfg.kind == "mjpeg":
        return MjpegSource(cfg, timeout_s)
    return CvSource(cfg, timeout_s)
