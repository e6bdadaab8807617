"""Low-confidence frames kept on the box as JPEGs, for later labelling (optional, off by default).

Why only on the box unless allowed: frames may show people, so they leave the box only when
``[snapshots] upload_allowed`` says so (GDPR); then each kept frame is also offered to ``upload``
(the daemon publishes a ``Snapshot`` message, best effort: the file stays on the box either
way). The folder is bounded by count and age.
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

log = logging.getLogger("parkwatch.edge.snapshots")


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
        self._since_prune = 0

    def wants(self, confidence: float) -> bool:
        return self.cfg.enabled and confidence <= self.cfg.max_confidence

    def save(self, camera: str, image: npt.NDArray[np.uint8], ts: float) -> str | None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            return None
        sid = f"{camera}-{int(ts * 1000)}-{uuid.uuid4().hex[:8]}"
        try:
            atomic_write_bytes(self.folder / f"{sid}.jpg", buf.tobytes())
        except OSError as e:
            self.errors += 1
            if self.errors == 1:
                log.warning("cannot keep snapshot in %s: %s", self.folder, e)
            return None
        self.saved += 1
        if self.upload is not None:
            if self.upload(sid, camera, ts, buf.tobytes()):
                self.uploaded += 1
            else:
                self.upload_skipped += 1  # offline: the file stays here for collection on site
        self._since_prune += 1
        if self._since_prune >= 50:
            self.prune()
        return sid

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
