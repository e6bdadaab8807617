"""Low-confidence frames kept on the box as JPEGs, for later labelling (optional, off by default).

Why only on the box unless allowed: frames may show people, so they leave the box only when
``[snapshots] upload_allowed`` says so (GDPR); then each kept frame is also offered to ``upload``
(the daemon publishes a ``Snapshot`` message, best effort: the file stays on the box either
way). The folder is bounded by count and age.

A snapshot is a side effect of a prediction and must never cost one: ``save`` never raises.
The JPEG adapts to the protocol's size bound (``Snapshot.jpeg``): a high-detail 1080p or 4K frame
is re-encoded at a lower quality, then scaled down, until it fits; what still cannot be kept or
sent is counted (``too_large``, ``errors``, ``upload_errors``), never thrown at the caller.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.config import SnapshotConfig
from shared.atomic import atomic_write_bytes
from shared.protocol.messages import SNAPSHOT_B64_MAX

log = logging.getLogger("parkwatch.edge.snapshots")

MAX_JPEG_BYTES = SNAPSHOT_B64_MAX // 4 * 3  # what fits the Snapshot message once in base64
QUALITIES = (90, 75)
MIN_SIDE = 160  # below this a snapshot is useless for labelling: give up, counted


def encode_within(image: npt.NDArray[np.uint8], max_bytes: int = MAX_JPEG_BYTES) -> tuple[bytes, bool] | None:
    """The best JPEG of ``image`` of at most ``max_bytes``, and whether it had to be reduced.

    Quality first (90, then 75), then the size, scaled by the square root of how far over the
    bound the last try was (JPEG size grows about with the pixel count), at most six encodes.
    None when even a small version does not fit or OpenCV cannot encode the image.
    """
    img = image
    reduced = False
    for _ in range(4):
        size = 0
        for q in QUALITIES:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            if not ok:
                return None
            size = len(buf)
            if size <= max_bytes:
                return buf.tobytes(), reduced
            reduced = True
        h, w = img.shape[:2]
        factor = min(0.9 * (max_bytes / size) ** 0.5, 0.75)
        nw, nh = round(w * factor), round(h * factor)
        if min(nw, nh) < MIN_SIDE:
            return None
        img = np.asarray(cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return None


class SnapshotStore:
    def __init__(
        self,
        cfg: SnapshotConfig,
        folder: Path,
        upload: Callable[[str, str, float, bytes], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.folder = folder
        self.upload = upload if cfg.upload_allowed else None
        self.uploaded = 0
        self.upload_skipped = 0
        self.saved = 0
        self.errors = 0
        self.reduced = 0  # re-encoded smaller to fit the message bound
        self.too_large = 0  # could not be made to fit: not kept
        self.upload_errors = 0
        self._since_prune = 0

    def wants(self, confidence: float) -> bool:
        return self.cfg.enabled and confidence <= self.cfg.max_confidence

    def save(self, camera: str, image: npt.NDArray[np.uint8], ts: float) -> str | None:
        """Keep (and offer for upload) one frame; returns its id, or None when it was not kept.
        Never raises: the prediction this frame belongs to is committed either way."""
        try:
            encoded = encode_within(image)
        except (cv2.error, ValueError) as e:  # an image OpenCV cannot encode
            encoded = None
            self._count_error(f"cannot encode a snapshot of camera {camera}: {e}")
        if encoded is None:
            self.too_large += 1
            if self.too_large == 1:
                log.warning(
                    "a snapshot of camera %s could not be made to fit %d bytes", camera, MAX_JPEG_BYTES
                )
            return None
        jpeg, reduced = encoded
        self.reduced += int(reduced)
        sid = f"{camera}-{int(ts * 1000)}-{uuid.uuid4().hex[:8]}"
        try:
            atomic_write_bytes(self.folder / f"{sid}.jpg", jpeg)
        except OSError as e:
            self._count_error(f"cannot keep snapshot in {self.folder}: {e}")
            return None
        self.saved += 1
        if self.upload is not None:
            try:
                sent = self.upload(sid, camera, ts, jpeg)
            except Exception as e:  # the MQTT link or the message: counted, the file stays here
                sent = False
                self.upload_errors += 1
                if self.upload_errors == 1:
                    log.warning("cannot upload snapshot %s: %s: %s", sid, type(e).__name__, e)
            if sent:
                self.uploaded += 1
            else:
                self.upload_skipped += 1  # offline: the file stays here for collection on site
        self._since_prune += 1
        if self._since_prune >= 50:
            try:
                self.prune()
            except OSError as e:
                self._count_error(f"cannot prune snapshots in {self.folder}: {e}")
        return sid

    def _count_error(self, msg: str) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("%s", msg)

    def prune(self) -> int:
        self._since_prune = 0
        files = sorted(self.folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        cutoff = time.time() - self.cfg.keep_days * 86400
        doomed = [p for p in files if p.stat().st_mtime < cutoff]
        keep = [p for p in files if p not in doomed]
        doomed += keep[: max(0, len(keep) - self.cfg.max_count)]
        for p in doomed:
            p.unlink(missing_ok=True)
        return len(doomed)
