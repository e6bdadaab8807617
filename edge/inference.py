"""The inference loop: take due frames from every camera, check them, classify them as one
batch, and commit the predictions to the outbox before anything else sees them.

Why one loop for all cameras: ONNX Runtime already uses the configured threads inside one
``run``; a batch across cameras amortises the call overhead, and one loop keeps the CPU budget
predictable on a small box. The loop never waits on a camera (``Camera.take`` never blocks),
so a dead camera cannot slow the others.

Stopping finishes the batch in hand; the writer (edge/writer.py) commits it and anything still
queued before it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.cameras import Camera, Frame
from edge.config import InferenceConfig, IntegrityConfig
from edge.events import RecentErrors
from edge.integrity import FrameCheck, IntegrityChecker
from edge.model import LoadedModel, ModelSlot
from edge.outbox import Outbox
from edge.snapshots import SnapshotStore
from edge.writer import OutboxWriter
from shared.modelpkg import ABSTAIN, PreprocessSpec

log = logging.getLogger("parkwatch.edge.inference")


@dataclass(frozen=True)
class Prepared:
    """A frame's integrity check and model input, computed on its camera's reader thread."""

    check: FrameCheck
    thumb: Any
    tensor: Any  # (1, …) float32 model input, or None when no model was loaded
    spec: PreprocessSpec | None


@dataclass
class CameraView:
    """What the status page shows for one camera: the frame last classified and its result."""

    frame: Frame
    prediction: dict[str, Any] | None
    flags: list[str]


class InferenceEngine:
    def __init__(
        self,
        cameras: list[Camera],
        slot: ModelSlot,
        outbox: Outbox,
        cfg: InferenceConfig,
        integrity: IntegrityConfig,
        wake: threading.Event,
        errors: RecentErrors,
        snapshots: SnapshotStore | None = None,
        on_commit: Any = None,
    ) -> None:
        self.cameras = cameras
        self.slot = slot
        self.outbox = outbox
        self.cfg = cfg
        self.wake = wake
        self.errors = errors
        self.snapshots = snapshots
        self.on_commit = on_commit
        self.checkers = {c.id: IntegrityChecker(integrity) for c in cameras}
        self._check_locks = {c.id: threading.Lock() for c in cameras}
        self.integrity_cfg = integrity
        self.views: dict[str, CameraView] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        self.latency_ms: deque[float] = deque(maxlen=2000)
        self._done_ts: deque[float] = deque(maxlen=2000)
        self.classified = 0
        self.abstained = 0
        self.skipped_static = 0
        self.skipped_no_model = 0
        self.inference_errors = 0
        self.writer = OutboxWriter(outbox, errors, on_commit)
        self.batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rr = 0
        self.heartbeat = time.monotonic()

    @property
    def lost_predictions(self) -> int:
        """Predictions made but never committed (disk full): counted, never silent."""
        return self.writer.lost

    def start(self) -> None:
        self.writer.start()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.writer.stop(timeout)  # commits the batch in hand and anything still queued

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- loop ------------------------------------------------------------------------------------
    def _collect(self) -> tuple[list[Frame], float]:
        now = time.monotonic()
        frames: list[Frame] = []
        wait = 0.25
        n = len(self.cameras)
        for i in range(n):
            cam = self.cameras[(self._rr + i) % n]
            f = cam.take(now)
            if f is not None:
                frames.append(f)
                if len(frames) >= self.cfg.max_batch:
                    break
            else:
                due = cam.due_in(now)
                if due is not None:
                    wait = min(wait, due)
        self._rr = (self._rr + 1) % max(n, 1)
        return frames, wait

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            frames, wait = self._collect()
            if not frames:
                self.wake.wait(wait)
                self.wake.clear()
                continue
            try:
                self.process(frames)
            except Exception as e:  # a bug here must show on the status page, not kill the loop
                self.inference_errors += 1
                self.errors.add("inference", f"{type(e).__name__}: {e}")
                log.exception("inference step failed")
                time.sleep(0.1)

    # -- one batch --------------------------------------------------------------------------------
    def _check(self, camera: str, image: Any) -> tuple[FrameCheck, Any]:
        checker = self.checkers.get(camera)
        if checker is None:  # a camera added after start (tests, future hot reload)
            checker = self.checkers[camera] = IntegrityChecker(self.integrity_cfg)
            self._check_locks[camera] = threading.Lock()
        with self._check_locks[camera]:  # reader thread and this loop may both check
            return checker.check(image)

    def prepare(self, camera: str, image: Any) -> Prepared:
        """Runs on a camera's reader thread (``Camera.prepare``): integrity and preprocessing
        for the model active now; :meth:`process` redoes the tensor if the model changed since."""
        check, thumb = self._check(camera, image)
        model = self.slot.current
        tensor = model.preprocessor([image]) if model is not None else None
        return Prepared(check, thumb, tensor, model.spec if model is not None else None)

    def process(self, frames: list[Frame]) -> list[dict[str, Any]]:
        run: list[tuple[Frame, list[str], Any]] = []
        for f in frames:
            prep = f.prepared if isinstance(f.prepared, Prepared) else None
            check, thumb = (prep.check, prep.thumb) if prep is not None else self._check(f.camera, f.image)
            motion = (
                self.checkers[f.camera].motion_since_classified(thumb)
                if self.cfg.motion_gating and f.camera in self.views
                else None
            )
            if motion is not None and motion < self.cfg.motion_threshold:
                self.skipped_static += 1
                old = self.views[f.camera]
                self.views[f.camera] = CameraView(f, old.prediction, check.flags)
                continue
            run.append((f, check.flags, thumb))
        if not run:
            return []
        model = self.slot.current  # one model for the whole batch, even if a swap lands now
        if model is None:
            self.skipped_no_model += len(run)
            for f, flags, _ in run:
                self.views[f.camera] = CameraView(f, None, flags)
            return []
        try:
            parts = []
            for f, _, _ in run:
                prep = f.prepared if isinstance(f.prepared, Prepared) else None
                if prep is not None and prep.tensor is not None and prep.spec == model.spec:
                    parts.append(prep.tensor)
                else:
                    parts.append(model.preprocessor([f.image]))
            probs = model.run(parts[0] if len(parts) == 1 else np.concatenate(parts))
        except Exception as e:
            self.inference_errors += 1
            self.errors.add("inference", f"model {model.version}: {type(e).__name__}: {e}")
            log.warning("inference failed on model %s: %s", model.version, e)
            return []
        done = time.time()
        preds = self._predictions(model, run, probs, done)
        self.writer.submit(preds)  # committed (and numbered) on the writer thread
        for (f, flags, thumb), pred in zip(run, preds, strict=True):
            self.checkers[f.camera].classified(thumb)
            self.views[f.camera] = CameraView(f, pred, flags)
            self.recent.appendleft(pred)
            self.latency_ms.append(pred["latency_ms"])
            self._done_ts.append(time.monotonic())
        self.classified += len(preds)
        self.batches += 1
        return preds

    def _predictions(
        self, model: LoadedModel, run: list[tuple[Frame, list[str], Any]], probs: np.ndarray, done: float
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        labels = model.labels
        for (f, flags, _), row in zip(run, probs, strict=True):
            idx = int(np.argmax(row))
            conf = float(min(max(row[idx], 0.0), 1.0))
            abstain = conf < self.cfg.confidence_threshold
            if abstain:
                self.abstained += 1
            snap = None
            if self.snapshots is not None and self.snapshots.wants(conf):
                snap = self.snapshots.save(f.camera, f.image, f.ts)
            out.append(
                {
                    "seq": None,  # set by the writer on commit (the key exists now: readers iterate)
                    "ts": done,
                    "camera": f.camera,
                    "label": ABSTAIN if abstain else labels[idx],
                    "confidence": round(conf, 6),
                    "probs": {
                        lab: round(float(min(max(p, 0.0), 1.0)), 6)
                        for lab, p in zip(labels, row, strict=True)
                    },
                    "model_version": model.version,
                    "abstain": abstain,
                    "flags": list(flags),
                    "latency_ms": round(max(done - f.ts, 0.0) * 1000, 3),
                    "frame_ts": f.ts,
                    "snapshot": snap,
                }
            )
        return out

    # -- numbers for telemetry and the status page ----------------------------------------------
    def latency_percentiles(self) -> dict[str, float]:
        if not self.latency_ms:
            return {}
        arr = np.asarray(list(self.latency_ms), dtype=np.float64)  # copy first: another thread appends
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}

    def fps(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        recent = [t for t in list(self._done_ts) if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], 1e-6)
        return round(len(recent) / span, 2)

    def abstain_rate(self) -> float | None:
        return round(self.abstained / self.classified, 4) if self.classified else None
