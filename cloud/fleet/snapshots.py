"""Snapshot images arriving from boxes: kept only for opted-in sites, never overwritten.

CCTV frames can show people and the park is in the EU, so two gates apply: the box sends a
snapshot only when its own ``[snapshots] upload_allowed`` says so, and the cloud keeps it only
for sites listed in ``[dashboard] snapshot_sites`` — anything else is dropped and counted.
Retention (``snapshot_keep_days``) is enforced by the dashboard's purge, and each device may
have at most ``fleet.snapshot_quota_per_day`` images kept per rolling 24 h (``over_quota``
beyond), so a box cannot fill the cloud's disk.
"""

from __future__ import annotations

import base64
import binascii
import collections
import threading
import time
from typing import Literal

from cloud.config import CloudConfig
from shared.atomic import atomic_write_bytes
from shared.protocol import Snapshot

Outcome = Literal["stored", "exists", "site_not_allowed", "not_jpeg", "over_quota"]

DAY_S = 86_400.0


class SnapshotQuota:
    """At most ``per_day`` kept snapshots per device in any 24 h (in memory, per worker)."""

    def __init__(self, per_day: int) -> None:
        self.per_day = per_day
        self._kept: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, device: str, now: float) -> bool:
        with self._lock:
            kept = self._kept.setdefault(device, collections.deque())
            while kept and now - kept[0] >= DAY_S:
                kept.popleft()
            if len(kept) >= self.per_day:
                return False
            kept.append(now)
            return True


def store_snapshot(
    cfg: CloudConfig, msg: Snapshot, quota: SnapshotQuota | None = None, now: float | None = None
) -> Outcome:
    """Write ``<snapshots_dir>/<id>.jpg`` atomically; first writer wins so no box can replace
    another box's image by reusing its id."""
    if msg.site not in cfg.dashboard.snapshot_sites:
        return "site_not_allowed"
    if quota is not None and not quota.take(f"{msg.site}/{msg.device}", time.time() if now is None else now):
        return "over_quota"
    try:
        data = base64.b64decode(msg.jpeg, validate=True)
    except (binascii.Error, ValueError):
        return "not_jpeg"
    if not data.startswith(b"\xff\xd8"):
        return "not_jpeg"
    path = cfg.paths.snapshots_dir / f"{msg.id}.jpg"
    if path.exists():
        return "exists"
    atomic_write_bytes(path, data)
    return "stored"
