"""The inference loop: take due frames from every camera, check them, classify their regions as
one batch, and commit the predictions to the outbox before anything else sees them.

Regions (``edge/perception``): the whole-frame view plus, per frame, motion boxes (from the
integrity checker's grey thumbnails, against the frame the model last saw), the camera's zones,
and a tiling of the whole frame for a camera's first frame, after a view-wide change and every
``[inference] full_scan_s``. Every region of every camera's frame goes into the same
``session.run`` (at most ``max_batch_regions`` rows each). Motion gating skips a frame whose view
neither changed overall nor holds a moving blob, so a still camera costs no inference.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.cameras import Camera, Frame
from edge.config import InferenceConfig, IntegrityConfig
from edge.events import RecentErrors
from edge.integrity import Box, FrameCheck, IntegrityChecker, motion_boxes
from edge.model import LoadedModel, ModelOutput, ModelSlot
from edge.outbox import Outbox
from edge.perception.ir import is_ir
from edge.perception.pipeline import FramePipeline, FrameResult, aggregate, reported, split
from edge.perception.regions import Region, Zone
from edge.snapshots import SnapshotStore
from edge.writer import OutboxWriter
from shared.modelpkg import ABSTAIN, NONE_LABEL, PreprocessSpec
from shared.protocol.messages import MAX_COORD, MAX_REGIONS

log = logging.getLogger("parkwatch.edge.inference")


@dataclass(frozen=True)
class Prepared:
    """A frame's integrity check and model input, computed on its camera's reader thread."""

    check: FrameCheck
    thumb: Any
    tensor: Any  # (1, …) float32 model input, or None when no model was loaded
    spec: PreprocessSpec | None
    ir: bool | None = None  # colour saturation near zero (an IR camera at night)


@dataclass
class CameraView:
    """What the status page shows for one camera: the frame last classified and its result."""

    frame: Frame
    prediction: dict[str, Any] | None
    flags: list[str]
    evaluated: list[Region] = field(default_factory=list)  # every region the model looked at
    zones: Sequence[Zone] = ()  # the camera's configured zones, drawn on the status page


@dataclass
class _Job:
    """One frame of a batch on its way through the pipeline."""

    frame: Frame
    flags: list[str]
    thumb: Any
    motion: list[Box] | None  # motion boxes in frame pixels; None = unknown (tile the frame)
    regions: list[Region] = field(default_factory=list)
    rows: Any = None  # (len(regions), …) model input
    pet_boxes: list[Box] = field(default_factory=list)  # where it held pets (not the whole-frame view)


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
        zones: dict[str, Sequence[Zone]] | None = None,
        commit_linger_s: float = 0.0,
    ) -> None:
        self.cameras = cameras
        self.slot = slot
        self.outbox = outbox
        self.cfg = cfg
        self.wake = wake
        self.errors = errors
        self.snapshots = snapshots
        self.on_commit = on_commit
        self.zones: dict[str, Sequence[Zone]] = dict(zones or {})
        self._pipe: tuple[LoadedModel, FramePipeline] | None = None
        self._last_scan: dict[str, float] = {}  # monotonic time of each camera's last full tiling
        self._pet_boxes: dict[str, list[Box]] = {}  # where each camera's last prediction saw pets
        self.checkers = {c.id: IntegrityChecker(integrity) for c in cameras}
        self._check_locks = {c.id: threading.Lock() for c in cameras}
        self.integrity_cfg = integrity
        self.views: dict[str, CameraView] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        self.latency_ms: deque[float] = deque(maxlen=2000)
        self._done_ts: deque[float] = deque(maxlen=2000)
        self.classified = 0
        self.abstained = 0
        self.nones = 0
        self.regions_run = 0  # model inputs (regions) classified
        self.pet_regions = 0  # regions reported as holding a pet
        self.unbuilt = 0  # frames classified whose prediction could not be built (a bug): lost, counted
        self.skipped_static = 0
        self.skipped_no_model = 0
        self.inference_errors = 0
        self.writer = OutboxWriter(outbox, errors, on_commit, linger_s=commit_linger_s)
        self.batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rr = 0
        self.heartbeat = time.monotonic()

    @property
    def lost_predictions(self) -> int:
        """Predictions made but never committed (disk full, a bug building one): counted, never silent."""
        return self.writer.lost + self.unbuilt

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
        return Prepared(check, thumb, tensor, model.spec if model is not None else None, is_ir(image))

    def pipeline(self, model: LoadedModel) -> FramePipeline:
        """The frame pipeline of ``model`` (one per model: a swap brings its own thresholds)."""
        if self._pipe is None or self._pipe[0] is not model:
            self._pipe = (model, FramePipeline(model, self.cfg.regions, self.cfg.confidence_threshold))
        return self._pipe[1]

    def process(self, frames: list[Frame]) -> list[dict[str, Any]]:
        run: list[_Job] = []
        for f in frames:
            prep = f.prepared if isinstance(f.prepared, Prepared) else None
            check, thumb = (prep.check, prep.thumb) if prep is not None else self._check(f.camera, f.image)
            checker = self.checkers[f.camera]
            seen = f.camera in self.views
            last = checker.last_classified if seen else None
            boxes: list[Box] | None = None
            if last is not None and self.cfg.regions.enabled and last.shape == thumb.shape:
                h, w = f.image.shape[:2]
                boxes = motion_boxes(thumb, last, w, h, self.cfg.motion_pixel_diff, self.cfg.motion_min_area)
            motion = checker.motion_since_classified(thumb) if self.cfg.motion_gating and seen else None
            # Still: too little change overall AND no moving blob (a small animal moving in a wide
            # view changes few pixels: the blob, not the mean, says it moved).
            if motion is not None and motion < self.cfg.motion_threshold and not boxes:
                self.skipped_static += 1
                old = self.views[f.camera]
                self.views[f.camera] = CameraView(f, old.prediction, check.flags, old.evaluated, old.zones)
                continue
            run.append(_Job(f, check.flags, thumb, boxes))
        if not run:
            return []
        model = self.slot.current  # one model for the whole batch, even if a swap lands now
        if model is None:
            self.skipped_no_model += len(run)
            for job in run:
                cam = job.frame.camera
                self.views[cam] = CameraView(job.frame, None, job.flags, [], self.zones.get(cam, ()))
            return []
        try:
            pipe = self.pipeline(model)
            for job in run:
                self._plan(pipe, model, job)
            batch = run[0].rows if len(run) == 1 else np.concatenate([job.rows for job in run])
            parts = split(self._run_model(model, batch), [len(job.regions) for job in run])
            # the closer squares of every camera's frames: one more batched run
            plans, parts, closer_rows = pipe.look_closer(
                [job.frame.image for job in run],
                [job.regions for job in run],
                parts,
                lambda rows: self._run_model(model, rows),
            )
            for job, plan in zip(run, plans, strict=True):
                job.regions = plan
        except Exception as e:
            self.inference_errors += 1
            self.errors.add("inference", f"model {model.version}: {type(e).__name__}: {e}")
            log.warning("inference failed on model %s: %s", model.version, e)
            return []
        done = time.time()
        preds: list[dict[str, Any]] = []
        done_jobs: list[_Job] = []
        for job, part in zip(run, parts, strict=True):
            try:  # one frame's failure must not cost the other frames of the batch; it is counted
                res = self._finish(pipe, model, job, part)
                preds.append(self._prediction(model, job, res, done))
                done_jobs.append(job)
            except Exception as e:
                self.unbuilt += 1
                self.errors.add("inference", f"camera {job.frame.camera}: {type(e).__name__}: {e}")
                log.exception("no prediction for a frame of camera %s", job.frame.camera)
        self.writer.submit(preds)  # committed (and numbered) on the writer thread
        now_mono = time.monotonic()
        for job, pred in zip(done_jobs, preds, strict=True):
            cam = job.frame.camera
            self.checkers[cam].classified(job.thumb)
            self.views[cam] = CameraView(job.frame, pred, job.flags, job.regions, self.zones.get(cam, ()))
            self._pet_boxes[cam] = job.pet_boxes
            self.recent.appendleft(pred)
            self.latency_ms.append(pred["latency_ms"])
            self._done_ts.append(now_mono)
        self.classified += len(preds)
        self.regions_run += len(batch) + closer_rows
        self.batches += 2 if closer_rows else 1  # model passes: a second look is one more
        return preds

    def _plan(self, pipe: FramePipeline, model: LoadedModel, job: _Job) -> None:
        """Regions for one frame and their model input rows.

        Motion boxes (plus where pets were last seen, so a pet that stopped moving is kept in
        view) when they are known; the whole frame tiled for the first frame of a camera, when
        the whole view changed, and every ``full_scan_s`` so a pet that never moved is found too.
        """
        f = job.frame
        now = time.monotonic()
        motion: list[Box] | None = job.motion
        if motion is not None and now - self._last_scan.get(f.camera, -1e18) >= self.cfg.full_scan_s:
            motion = None
        if motion is None:
            self._last_scan[f.camera] = now
        else:
            # The planner adds a margin around every motion box: take it off a kept pet box first,
            # or the box would grow frame after frame until the pet is a speck in it.
            grow = 1 + self.cfg.regions.motion_margin
            kept = [_shrunk(b, grow) for b in self._pet_boxes.get(f.camera, [])]
            motion = motion + [b for b in kept if b not in motion]
        job.regions = pipe.plan(f.image, motion, self.zones.get(f.camera, ()))
        prep = f.prepared if isinstance(f.prepared, Prepared) else None
        reuse = prep is not None and prep.tensor is not None and prep.spec == model.spec
        if reuse and job.regions and job.regions[0].source == "full":
            # the whole-frame view was prepared on the camera's reader thread already
            rest = job.regions[1:]
            full = prep.tensor  # type: ignore[union-attr]
            job.rows = np.concatenate([full, pipe.tensors(f.image, rest)]) if rest else full
            return
        job.rows = pipe.tensors(f.image, job.regions)

    def _finish(self, pipe: FramePipeline, model: LoadedModel, job: _Job, out: ModelOutput) -> FrameResult:
        """``FramePipeline.finish`` with the ``ir`` measured on the camera's reader thread
        (``prepare``), so the inference thread spends its time on the model: the same pure
        ``aggregate`` decides the frame, exactly as ``parkwatch edge classify`` does."""
        prep = job.frame.prepared if isinstance(job.frame.prepared, Prepared) else None
        if prep is None or prep.ir is None:
            return pipe.finish(job.frame.image, job.regions, out)
        regions = job.regions
        if out.probs.shape[0] != len(regions):
            raise ValueError(f"{out.probs.shape[0]} output rows for {len(regions)} regions")
        agg = aggregate(
            [r.source for r in regions],
            out.probs,
            out.pet_score,
            model.labels,
            pipe.rejection,
            pipe.threshold,
            pipe.region_threshold,
            pipe.abstain,
        )
        return FrameResult(
            label=agg.label,
            confidence=round(agg.confidence, 6),
            probs={lab: round(float(p), 6) for lab, p in zip(model.labels, out.probs[agg.main], strict=True)},
            regions=reported(regions, agg),
            ir=prep.ir,
            evaluated=len(regions),
        )

    def _run_model(self, model: LoadedModel, batch: np.ndarray) -> ModelOutput:
        """All regions of all cameras' frames, at most ``max_batch_regions`` per session.run."""
        k = self.cfg.max_batch_regions
        if len(batch) <= k:
            return model.run_full(batch)
        parts = [model.run_full(batch[i : i + k]) for i in range(0, len(batch), k)]
        scores = [p.pet_score for p in parts]
        return ModelOutput(
            np.concatenate([p.probs for p in parts]),
            None if any(s is None for s in scores) else np.concatenate(scores),  # type: ignore[arg-type]
        )

    def _prediction(self, model: LoadedModel, job: _Job, res: FrameResult, done: float) -> dict[str, Any]:
        f = job.frame
        abstain = res.label == ABSTAIN
        if abstain:
            self.abstained += 1
        elif res.label == NONE_LABEL:
            self.nones += 1
        regions = [
            {"box": _bounded(r.region.box), "label": r.label, "confidence": round(float(r.confidence), 6)}
            for r in res.regions[:MAX_REGIONS]
        ]
        self.pet_regions += len(regions)
        job.pet_boxes = [
            (r.region.x, r.region.y, r.region.w, r.region.h) for r in res.regions if r.region.source != "full"
        ]
        snap = None
        if self.snapshots is not None and self.snapshots.wants(res.confidence):
            try:  # SnapshotStore.save does not raise; this guards the prediction against a bug there
                snap = self.snapshots.save(f.camera, f.image, f.ts)
            except Exception as e:
                self.errors.add("snapshots", f"{type(e).__name__}: {e}")
        return {
            "seq": None,  # set by the writer on commit (the key exists now: readers iterate)
            "ts": done,
            "camera": f.camera,
            "label": res.label,
            "confidence": round(float(min(max(res.confidence, 0.0), 1.0)), 6),
            "probs": {lab: round(float(min(max(p, 0.0), 1.0)), 6) for lab, p in res.probs.items()},
            "model_version": model.version,
            "abstain": abstain,
            "flags": list(job.flags),
            "latency_ms": round(max(done - f.ts, 0.0) * 1000, 3),
            "frame_ts": f.ts,
            "snapshot": snap,
            "regions": regions,
            "ir": bool(res.ir),
        }

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
        """Share of classified frames (not regions) that abstained."""
        return round(self.abstained / self.classified, 4) if self.classified else None

    def none_rate(self) -> float | None:
        """Share of classified frames the model was sure held no pet."""
        return round(self.nones / self.classified, 4) if self.classified else None


def _shrunk(box: Box, factor: float) -> Box:
    x, y, w, h = box
    nw, nh = max(1, round(w / factor)), max(1, round(h / factor))
    return (x + (w - nw) // 2, y + (h - nh) // 2, nw, nh)


def _bounded(box: list[int]) -> list[int]:
    """A box the protocol accepts (frames over 16384 pixels do not exist; this only clamps)."""
    x, y, w, h = (max(0, int(v)) for v in box)
    x, y = min(x, MAX_COORD - 1), min(y, MAX_COORD - 1)
    return [x, y, max(1, min(w, MAX_COORD - x)), max(1, min(h, MAX_COORD - y))]
