"""One reader thread per camera: latest-frame policy, fps cap, reconnect with backoff, state.

Why a thread per camera: OpenCV and sockets block, and a camera that hangs must never delay
the others or the inference loop. The inference loop only ever calls :meth:`Camera.take`,
which never blocks.

States (published in telemetry and shown on the status page):

* ``streaming`` – frames arrive;
* ``stalled`` – connected, but no frame for ``stall_after_s`` (the reader is still waiting);
* ``reconnecting`` – the source failed; retrying with exponential backoff
  (``reconnect_initial_s`` doubling up to ``reconnect_max_s``);
* ``offline`` – disabled, a file/folder that ended without ``loop``, or failing for so long
  that the backoff reached its maximum (still retrying, at the slowest pace).

Live sources (RTSP, MJPEG, USB) are read as fast as they deliver; a frame replaced before the
inference loop took it is *dropped* and counted. Files and folders are read on demand instead
(one frame ahead when there is no fps cap, so decoding overlaps inference), so every frame of a
clip is classified and none is counted as dropped.

``Camera.prepare`` (set by the daemon to ``InferenceEngine.prepare``) runs the integrity check
and the preprocessing on the reader thread for frames that will be classified, which takes that
work off the inference loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.config import CameraConfig
from edge.errors import CameraError
from edge.sources import FrameSource, make_source, redact_text, redact_url
from shared.backoff import at_maximum, backoff_delay
from shared.protocol import CameraTelemetry

log = logging.getLogger("parkwatch.edge.cameras")

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Frame:
    camera: str
    image: U8
    ts: float  # wall clock at capture
    mono: float  # monotonic clock at capture
    index: int
    prepared: Any = None  # work done ahead on the reader thread (see Camera.prepare)


RECONNECT_JITTER = 0.1  # ± so a site's cameras, cut by one power failure, do not retry in step


class Camera:
    def __init__(
        self,
        cfg: CameraConfig,
        wake: threading.Event | None = None,
        source_factory: Callable[[CameraConfig, float], FrameSource] = make_source,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.wake = wake or threading.Event()
        self._factory = source_factory
        #: called on the reader thread with each frame that will be classified next, so checks
        #: and preprocessing overlap the previous inference instead of following it
        self.prepare: Callable[[str, U8], Any] | None = None
        #: called with each error message, so the status page's "Recent errors" lists camera trouble
        self.on_error: Callable[[str, str], None] | None = None
        self._lock = threading.Lock()
        self._consumed = threading.Condition(self._lock)
        # Live sources keep only the newest frame; on-demand ones without an fps cap read one
        # frame ahead, so decoding overlaps the inference of the frame before.
        self._ready: deque[Frame] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_due = 0.0
        self._period = 1.0 / cfg.fps if cfg.fps else 0.0
        self._state = "offline" if not cfg.enabled else "reconnecting"
        self._connected = False
        self._read_started: float | None = None
        self.failures = 0
        self.frames = 0
        self.taken = 0
        self.dropped = 0
        self.reconnects = 0
        self.last_frame_ts: float | None = None
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self._fps_ema = 0.0
        self._last_mono: float | None = None
        self._ended = False
        #: frames refused before decoding, by kind (too-many-pixels, bad-shape, ...)
        self.refused: Counter[str] = Counter()
        #: frames identical to the one before (a frozen camera re-sending its last picture)
        self.repeated = 0
        self._last_new_mono: float | None = None
        self._prev_img: U8 | None = None
        self._retry_now = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if not self.cfg.enabled:
            return
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            self._consumed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("camera %s: reader still blocked in its source after %.0f s", self.id, timeout)

    # -- consumer side ---------------------------------------------------------------------------
    def take(self, now_mono: float | None = None) -> Frame | None:
        """The newest frame if one is waiting and the fps cap allows it now; never blocks."""
        now = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            if not self._ready or now < self._next_due:
                return None
            frame = self._ready.popleft()
            self._next_due = max(self._next_due + self._period, now) if self._period else now
            self.taken += 1
            self._consumed.notify_all()
            return frame

    def retry_now(self) -> bool:
        """Skip the rest of the backoff wait (the status page's "retry now"); False if not waiting."""
        if not self.cfg.enabled or self._ended or self._connected:
            return False
        self._retry_now.set()
        return True

    def due_in(self, now_mono: float) -> float | None:
        """Seconds until :meth:`take` could return a frame, or None if no frame is waiting."""
        with self._lock:
            if not self._ready:
                return None
            return max(0.0, self._next_due - now_mono)

    @property
    def state(self) -> str:
        if not self.cfg.enabled or self._ended:
            return "offline"
        with self._lock:
            state = self._state
            started = self._read_started
            last_new = self._last_new_mono
        now = time.monotonic()
        if state == "streaming" and (
            (started is not None and now - started > self.cfg.stall_after_s)
            or (last_new is not None and now - last_new > self.cfg.stall_after_s)
        ):
            return "stalled"
        return state

    def telemetry(self, integrity: dict[str, int] | None = None) -> CameraTelemetry:
        fps = self._fps_ema
        if self._last_mono is not None and time.monotonic() - self._last_mono > 5:
            fps = 0.0
        return CameraTelemetry(
            state=self.state,
            fps=round(fps, 2),
            frames=self.frames,
            dropped=self.dropped,
            reconnects=self.reconnects,
            last_frame_ts=self.last_frame_ts,
            error=self.last_error,
            integrity=integrity or {},
            refused=dict(self.refused),
        )

    # -- reader thread ---------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        with self._lock:
            if state != self._state:
                log.info("camera %s: %s -> %s", self.id, self._state, state)
            self._state = state

    def _error(self, msg: str) -> None:
        msg = redact_text(msg)  # an OpenCV or socket error may quote the URL with its password
        if msg != self.last_error:
            log.warning("%s", msg)
        self.last_error = msg
        self.last_error_ts = time.time()
        if self.on_error is not None:
            self.on_error(f"camera {self.id}", msg)

    def _run(self) -> None:
        timeout = max(self.cfg.stall_after_s * 1.5, 2.0)
        while not self._stop.is_set():
            source = self._factory(self.cfg, timeout)
            source.refused = self.refused  # counts outlive the source, which each retry replaces
            try:
                source.open()
                self._connected = True
                # failures are reset and the state says "streaming" only once a frame arrived:
                # a URL that opens but never gives a frame (a web page) must keep backing off
                self._pump(source)
                if self._ended:
                    return
            except CameraError as e:
                self._error(str(e))
            except Exception as e:  # OpenCV raising on a corrupt stream must not kill the reader
                self._error(f"camera {self.id}: {type(e).__name__}: {e}")
            finally:
                self._read_started = None
                with contextlib.suppress(Exception):
                    source.close()
            if self._stop.is_set():
                return
            self._connected = False
            self.failures += 1
            self.reconnects += 1  # attempts: a camera that never comes back still shows it is trying
            initial, maximum = self.cfg.reconnect_initial_s, self.cfg.reconnect_max_s
            delay = backoff_delay(self.failures, initial, maximum, RECONNECT_JITTER)
            at_max = at_maximum(self.failures, initial, maximum)
            self._set_state("offline" if at_max else "reconnecting")
            self._retry_now.clear()
            deadline = time.monotonic() + delay
            while not self._stop.is_set() and not self._retry_now.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._retry_now.wait(min(left, 0.25))
            if self._retry_now.is_set():
                log.info("camera %s: retrying now (asked on the status page)", self.id)

    def _pump(self, source: FrameSource) -> None:
        while not self._stop.is_set():
            if not source.live:
                # On demand: read the next frame only once the last one was taken and the fps cap
                # allows another, so its timestamp is when it was read, not when it was queued.
                depth = 1 if self._period else 2
                with self._lock:
                    while not self._stop.is_set():
                        wait = 0.5 if len(self._ready) >= depth else self._next_due - time.monotonic()
                        if wait <= 0:
                            break
                        self._consumed.wait(min(wait, 0.5))
                if self._stop.is_set():
                    return
            self._read_started = started = time.monotonic()
            img = source.read()
            self._read_started = None
            if img is not None and source.live:
                self._check_fresh(img, started)
            if img is None:  # end of file or folder
                if self.cfg.loop:
                    source.close()
                    source.open()
                    continue
                self._ended = True
                self._error(f"camera {self.id}: reached the end of {redact_url(self.cfg.url)} (loop = false)")
                return
            now_mono = time.monotonic()
            ts = time.time()
            prepared = None
            # Only for frames that will be classified: on-demand sources, no fps cap, or due now
            # (a capped live camera's frames mostly get dropped; preparing them would waste CPU).
            if self.prepare is not None and (
                not source.live or not self._period or now_mono >= self._next_due
            ):
                try:
                    prepared = self.prepare(self.id, img)
                except Exception as e:  # the inference loop redoes the work and reports the error
                    self._error(f"camera {self.id}: preparing a frame failed: {type(e).__name__}: {e}")
            frame = Frame(self.id, img, ts, now_mono, self.frames, prepared)
            with self._lock:
                if source.live and self._ready:
                    self.dropped += len(self._ready)
                    self._ready.clear()
                self._ready.append(frame)
                self._state = "streaming"
            if self.failures:
                log.info("camera %s: first frame after %d failed attempt(s)", self.id, self.failures)
            self.failures = 0
            self.frames += 1
            self.last_frame_ts = frame.ts
            if self._last_mono is not None:
                dt = max(now_mono - self._last_mono, 1e-6)
                # after a gap (a stall, a reconnect) the average starts again: blending a burst
                # of buffered frames into an old average showed 57 fps for a frozen camera
                if dt > min(self.cfg.stall_after_s, 2.0):
                    self._fps_ema = 0.0  # the gap is no frame interval: the next one starts afresh
                else:
                    self._fps_ema = 0.9 * self._fps_ema + 0.1 / dt if self._fps_ema else 1.0 / dt
            self._last_mono = now_mono
            self.wake.set()

    def _check_fresh(self, img: U8, started: float) -> None:
        """Raise CameraError (so the reader reconnects) when a live camera gives no *new* frame
        for ``stall_after_s``: one read that long, or only copies of the last picture that long
        (FFmpeg re-yielding its last frame after a timeout, a camera whose encoder froze)."""
        now = time.monotonic()
        limit = self.cfg.stall_after_s
        if now - started > limit:
            self._last_new_mono = None
            raise CameraError(
                f"camera {self.id}: one frame took {now - started:.0f} s (stalled): reconnecting"
            )
        prev = self._prev_img
        same = (
            prev is not None
            and prev.shape == img.shape
            and np.array_equal(prev[::16, ::16], img[::16, ::16])
            and np.array_equal(prev, img)
        )
        self._prev_img = img
        if not same or self._last_new_mono is None:
            with self._lock:
                self._last_new_mono = now
            return
        self.repeated += 1
        if now - self._last_new_mono > limit:
            with self._lock:
                self._last_new_mono = None
            raise CameraError(
                f"camera {self.id}: only repeats of the same picture for {limit:g} s (camera frozen?): "
                "reconnecting"
            )
