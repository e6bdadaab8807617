"""``parkwatch edge camera test URL``: what a technician needs to know about one camera URL.

Why: a wrong RTSP path and a dead host used to give the same "cannot open" message. This walks
the layers in order and stops at the first that fails, saying what it means:

1. the host answers on its port (TCP);
2. the protocol reply: RTSP ``DESCRIBE`` or HTTP ``GET`` status (401 = user/password, 404 = path)
   and, for MJPEG, whether the URL is a stream or a web page;
3. one frame decoded through the same reader the daemon uses, saved as a JPEG.

Step 2 runs only when step 3 failed, to say why (a working camera is not disturbed by probes).

The meaning of replies is pure (:func:`explain_rtsp`); the probes are small I/O functions.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.config import CameraConfig
from edge.errors import CameraError
from edge.mqttlink import connect_failure
from edge.sources import http_hint, make_source, mjpeg_content_problem, redact_url

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    url: str
    kind: str
    steps: list[Step] = field(default_factory=list)
    frame: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def ok(self) -> bool:
        return self.frame is not None and all(s.ok for s in self.steps)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.steps.append(Step(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def guess_kind(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.startswith("rtsp"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "mjpeg"
    if url.isdigit() or url.startswith("/dev/video"):
        return "usb"
    return "folder" if Path(url).is_dir() else "file"


def explain_rtsp(status: int, reason: str, had_credentials: bool = False) -> tuple[bool, str]:
    """Pure: what an RTSP DESCRIBE status means for the technician."""
    if status == 200:
        return True, "RTSP 200 OK: the camera has a stream at this path"
    text = {
        401: (
            "RTSP 401 Unauthorized: the user or password in the URL is wrong"
            if had_credentials
            else "RTSP 401 Unauthorized: the camera wants a user and password: put them in the URL "
            "(rtsp://user:password@host/path)"
        ),
        403: "RTSP 403 Forbidden: this user may not view the stream (check its rights on the camera)",
        404: "RTSP 404 Not Found: wrong path: the camera answers, but has no stream at this path "
        "(see its manual, e.g. /Streaming/Channels/102 or /stream2)",
        454: "RTSP 454 Session Not Found: retry; if it persists, restart the camera",
        503: "RTSP 503 Service Unavailable: the camera is busy (too many viewers?) or still starting",
    }.get(status, f"RTSP {status} {reason}: unexpected reply")
    return False, text


def _digest(user: str, password: str, method: str, uri: str, challenge: str) -> str:
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}"'


def _rtsp_describe(
    sock: socket.socket, url: str, cseq: int, auth: str | None
) -> tuple[int, str, dict[str, str]]:
    lines = [f"DESCRIBE {url} RTSP/1.0", f"CSeq: {cseq}", "Accept: application/sdp", "User-Agent: parkwatch"]
    if auth:
        lines.append(f"Authorization: {auth}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first, *rest = head.split("\r\n")
    m = re.match(r"RTSP/\d\.\d (\d{3}) ?(.*)", first)
    if not m:
        raise OSError(f"not an RTSP reply: {first[:60]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
    return int(m[1]), m[2], headers


def probe_rtsp(url: str, timeout: float) -> tuple[bool, str]:
    u = urllib.parse.urlsplit(url)
    user, password = urllib.parse.unquote(u.username or ""), urllib.parse.unquote(u.password or "")
    netloc = u.hostname or ""
    if u.port:
        netloc += f":{u.port}"
    bare = urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, ""))
    with socket.create_connection(
        (u.hostname or "", u.port or DEFAULT_PORTS["rtsp"]), timeout=timeout
    ) as sock:
        status, reason, headers = _rtsp_describe(sock, bare, 1, None)
        if status == 401 and user:
            challenge = headers.get("www-authenticate", "")
            if challenge.lower().startswith("digest"):
                auth = _digest(user, password, "DESCRIBE", bare, challenge)
            else:
                auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            status, reason, headers = _rtsp_describe(sock, bare, 2, auth)
    return explain_rtsp(status, reason, bool(user))


def probe_http(url: str, timeout: float) -> tuple[bool, str]:
    import http.client

    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname or "", u.port, timeout=timeout)
    headers = {}
    if u.username:
        cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    try:
        conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""), headers=headers)
        resp = conn.getresponse()
        ctype = resp.getheader("Content-Type")
    finally:
        conn.close()
    if resp.status != 200:
        return False, f"HTTP {resp.status} {resp.reason}{http_hint(resp.status)}"
    if problem := mjpeg_content_problem(ctype):
        return False, f"HTTP 200, but the URL {problem}"
    return True, f"HTTP 200 OK, {ctype or 'no Content-Type'}: an MJPEG stream"


def check_camera(url: str, out: Path, kind: str | None = None, timeout: float = 5.0) -> Report:
    kind = kind or guess_kind(url)
    report = Report(redact_url(url), kind)
    if kind in ("rtsp", "mjpeg"):
        u = urllib.parse.urlsplit(url)
        if not u.hostname:
            report.add("url", False, f"{report.url} names no host")
            return report
        port = u.port or DEFAULT_PORTS.get(u.scheme.lower(), 80)
        try:
            socket.create_connection((u.hostname, port), timeout=timeout).close()
            report.add("reach", True, f"{u.hostname}:{port} answers (TCP)")
        except OSError as e:
            reason, hint = connect_failure(e)
            what = {
                "connection refused": "the host is up but nothing listens on that port (wrong port? "
                "RTSP/HTTP service off in the camera?)",
                "timed out": "no answer: wrong IP address, camera off, or another network/VLAN",
            }.get(reason, hint)
            report.add("reach", False, f"cannot reach {u.hostname}:{port}: {reason}: {what}")
            return report
    # The frame first, through the daemon's own reader; only if it fails is the camera asked
    # directly what is wrong (a bare DESCRIBE just before the reader's own session made a
    # GStreamer camera refuse the reader now and then).
    img, why = _grab(url, kind, timeout)
    if img is None and kind in ("rtsp", "mjpeg"):
        try:
            ok, detail = probe_rtsp(url, timeout) if kind == "rtsp" else probe_http(url, timeout)
        except (OSError, ssl.SSLError) as e:
            ok, detail = False, f"the {kind} reply could not be read: {e}"
        if not report.add("reply", ok, detail):
            return report
    if img is None:
        report.add("frame", False, why)
        return report
    import cv2

    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)
    report.frame, report.height, report.width = str(out), int(img.shape[0]), int(img.shape[1])
    report.add("frame", True, f"one {img.shape[1]}x{img.shape[0]} frame saved to {out}")
    return report


def _grab(url: str, kind: str, timeout: float) -> tuple[Any, str]:
    """(one frame or None, why not) through the same source class the daemon uses."""
    cfg = CameraConfig.model_validate({"id": "test", "kind": kind, "url": url})
    source = make_source(cfg, timeout * 2)  # opening a stream (FFmpeg probing it) takes longer than a reply
    try:
        source.open()
        deadline = time.monotonic() + timeout * 2
        img = None
        while img is None and time.monotonic() < deadline:
            img = source.read()
    except CameraError as e:
        return None, str(e)
    finally:
        source.close()
    return (img, "") if img is not None else (None, "no frame arrived")


def render(report: Report) -> str:
    lines = [f"camera test of {report.url} (as {report.kind}):"]
    lines += [f"  {'ok  ' if s.ok else 'FAIL'} {s.name:6} {s.detail}" for s in report.steps]
    lines.append("  result: works" if report.ok else "  result: does not work (first FAIL line says why)")
    return "\n".join(lines)
