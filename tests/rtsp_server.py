"""A real RTSP camera for tests and demos: GStreamer's RTSP server, run by Debian's Python.

Why a separate interpreter: the GStreamer bindings (``gi``) come from Debian packages
(python3-gi, gir1.2-gst-rtsp-server-1.0) and exist only for ``/usr/bin/python3``, not in the
venv. Tests use :class:`RtspServer` (plain subprocess control, importable from the venv), which
starts this file as a script; ``kill()`` / ``start()`` simulate a camera that dies and returns.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam1 [--clip clip.mp4]

prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` once it serves. Without ``--clip`` it serves
``videotestsrc`` (640×480, 15 fps, H.264); with a clip (H.264 in Matroska, e.g. made by
:func:`make_clip` from sample photos into ``clip.mkv``) it plays the clip once per client
connection, so the stream shows real cats and dogs; at its end the camera sees the stream close
and reconnects, which plays it again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_HINT = (
    "the GStreamer RTSP server is missing: sudo apt-get install -y python3-gi gir1.2-gst-rtsp-server-1.0 "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad "
    "(or run provisioning/system-deps.sh camera)"
)

TESTSRC = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,framerate=15/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )"
)


def clip_launch(clip: str) -> str:
    # Matroska: this machine's qtdemux finds "no playable streams" in ffmpeg's MP4 output.
    demux = "matroskademux" if clip.endswith(".mkv") else "qtdemux"
    return (
        f"( filesrc location={clip} ! {demux} ! h264parse config-interval=-1 "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_prerequisites() -> str | None:
    """None if the server can run here, else the message saying what to install."""
    if not Path(SYSTEM_PYTHON).exists():
        return INSTALL_HINT
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer",
        ],
        capture_output=True,
        timeout=30,
    )
    return None if probe.returncode == 0 else INSTALL_HINT + "\n" + probe.stderr.decode()[-500:]


def make_clip(images: list[Path], out: Path, seconds_per_image: float = 0.5, fps: int = 10) -> Path:
    """An H.264 clip (640×480) showing ``images`` one after another, made with ffmpeg.

    The container follows ``out``'s suffix: ``.mkv`` for the RTSP server, ``.mp4`` works for
    OpenCV file cameras too."""
    import cv2  # the venv's OpenCV: this helper runs in the test process

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is missing: sudo apt-get install -y ffmpeg")
    repeat = max(1, round(seconds_per_image * fps))
    enc = subprocess.Popen(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            "640x480",
            "-r",
            str(fps),
            "-i",
            "-",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(fps),
            str(out),
        ],
        stdin=subprocess.PIPE,
    )
    assert enc.stdin is not None
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        frame = cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA).tobytes()
        for _ in range(repeat):
            enc.stdin.write(frame)
    enc.stdin.close()
    if enc.wait(120) != 0:
        raise RuntimeError(f"ffmpeg failed to encode {out}")
    return out


class RtspServer:
    """Controls one server process; port and mount stay the same across kill()/start()."""

    def __init__(
        self,
        port: int | None = None,
        mount: str = "/cam1",
        clip: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.mount = mount
        self.clip = clip
        self.auth = auth  # (user, password): the camera answers 401 without them (HTTP Basic)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> RtspServer:
        args = [SYSTEM_PYTHON, str(Path(__file__).resolve()), "--port", str(self.port), "--mount", self.mount]
        if self.clip is not None:
            args += ["--clip", str(self.clip)]
        if self.auth is not None:
            args += ["--user", self.auth[0], "--password", self.auth[1]]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"READY"):
                return self
            if not line and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"RTSP server exited ({self.proc.returncode}): {err[-1500:]}")
        self.kill()
        raise RuntimeError(f"RTSP server did not become ready within {timeout} s")

    def kill(self) -> None:
        """Die like a camera losing power: SIGKILL, no goodbye to clients."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        self.proc = None

    stop = kill

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _serve(port: int, mount: str, clip: str | None, user: str | None = None, password: str = "") -> None:
    # runs under /usr/bin/python3
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(clip_launch(clip) if clip else TESTSRC)
    factory.set_shared(True)
    if user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"READY rtsp://127.0.0.1:{port}{mount}", flush=True)
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    loop.run()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--mount", default="/cam1")
    ap.add_argument("--clip", default=None, help="H.264 MP4 to serve instead of a test pattern")
    ap.add_argument("--user", default=None, help="require HTTP Basic credentials (401 without)")
    ap.add_argument("--password", default="")
    a = ap.parse_args()
    _serve(a.port, a.mount, a.clip, a.user, a.password)
