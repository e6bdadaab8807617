"""Frame integrity: is this camera showing the park, or black, glare, a frozen or moved image?

Pure computation on a small grey thumbnail (no I/O), one :class:`IntegrityChecker` per camera
because frozen and tampered need history. The flags ride on each prediction (so the cloud can
discount them) and are counted per camera in telemetry. ``docs/technician.md`` explains each
flag and what to do about it; the thresholds live in ``[integrity]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from edge.config import IntegrityConfig

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

THUMB = (160, 120)  # width, height: enough for blur, cheap for everything else
FLAGS = ("black", "overexposed", "covered", "blurred", "frozen", "tampered")
REFERENCE_ALPHA = 0.02
MAX_MOTION_BOXES = 8
WHOLE_VIEW_MOVED = 0.5  # a blob over half the thumbnail: light changed or the camera moved
_DILATE = np.ones((5, 5), np.uint8)

Box = tuple[int, int, int, int]


def thumbnail(img_bgr: U8) -> F32:
    small = cv2.resize(img_bgr, THUMB, interpolation=cv2.INTER_AREA)  # shrink first: 16x less to convert
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    return np.asarray(grey, dtype=np.float32)


@dataclass
class FrameCheck:
    flags: list[str]
    mean: float
    std: float
    sharpness: float
    change: float | None  # mean abs difference to the previous frame
    motion: float | None  # mean abs difference to the last classified frame


@dataclass
class IntegrityChecker:
    cfg: IntegrityConfig
    counts: Counter[str] = field(default_factory=Counter)
    _prev: F32 | None = None
    _reference: F32 | None = None
    _last_classified: F32 | None = None
    _still_frames: int = 0

    def check(self, img_bgr: U8) -> tuple[FrameCheck, F32]:
        t = thumbnail(img_bgr)
        mean = float(t.mean())
        std = float(t.std())
        sharp = float(cv2.Laplacian(t, cv2.CV_32F).var())
        flags: list[str] = []
        if mean <= self.cfg.black_max_mean:
            flags.append("black")
        elif mean >= self.cfg.overexposed_min_mean:
            flags.append("overexposed")
        elif std <= self.cfg.covered_max_std:
            flags.append("covered")
        elif sharp < self.cfg.blur_min_laplacian_var:
            flags.append("blurred")
        change = None
        if self._prev is not None:
            change = float(np.abs(t - self._prev).mean())
            self._still_frames = self._still_frames + 1 if change <= self.cfg.frozen_max_diff else 0
            if self._still_frames + 1 >= self.cfg.frozen_min_frames:
                flags.append("frozen")
        if self._reference is None:
            self._reference = t.copy()
        else:
            # Tampering = the view differs a lot from what this camera usually sees, *and* the new
            # view is steady (a moved or sprayed camera), not just a busy scene.
            away = float(np.abs(t - self._reference).mean())
            if (
                away >= self.cfg.tamper_min_change
                and change is not None
                and change < self.cfg.tamper_min_change / 4
            ):
                flags.append("tampered")
            cv2.accumulateWeighted(t, self._reference, REFERENCE_ALPHA)
        motion = (
            float(np.abs(t - self._last_classified).mean()) if self._last_classified is not None else None
        )
        self._prev = t
        self.counts.update(flags)
        self.counts["frames"] += 1
        return FrameCheck(flags, mean, std, sharp, change, motion), t

    def classified(self, thumb: F32) -> None:
        """Remember what the model last saw, for motion gating."""
        self._last_classified = thumb

    @property
    def last_classified(self) -> F32 | None:
        return self._last_classified

    def motion_since_classified(self, thumb: F32) -> float | None:
        """Change against the frame the model last saw, measured when the gating decision is
        made: a reader thread may prepare the next frame before the previous one is classified."""
        last = self._last_classified
        return float(np.abs(thumb - last).mean()) if last is not None else None

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def motion_boxes(
    thumb: F32, before: F32, frame_w: int, frame_h: int, pixel_diff: float, min_area: int
) -> list[Box] | None:
    """Where the view changed between two thumbnails, as boxes in frame pixels, largest first.

    Cheap by design (a 160x120 difference, one dilation, one connected-components pass: well under
    a millisecond), so a camera can afford it on every frame. The dilation joins the parts of one
    moving animal (legs, tail) into one blob. None when the whole view changed (lighting, an IR
    switch, a moved camera): then nothing is known about where to look.
    """
    mask = (cv2.absdiff(thumb, before) > pixel_diff).astype(np.uint8)
    if not mask.any():
        return []
    mask = np.asarray(cv2.dilate(mask, _DILATE), dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    th, tw = thumb.shape[:2]
    sx, sy = frame_w / tw, frame_h / th
    blobs = sorted((stats[i] for i in range(1, n)), key=lambda s: int(s[4]), reverse=True)
    boxes: list[Box] = []
    for x, y, w, h, area in blobs:
        if w * h >= WHOLE_VIEW_MOVED * tw * th:
            return None
        if area < min_area or len(boxes) >= MAX_MOTION_BOXES:
            continue
        bx, by = int(x * sx), int(y * sy)
        bw = max(1, min(round(w * sx), frame_w - bx))
        bh = max(1, min(round(h * sy), frame_h - by))
        boxes.append((bx, by, bw, bh))
    return boxes
