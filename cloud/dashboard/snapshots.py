"""Snapshot images in the cloud: where they are, who may see them, and how long they stay.

Frames can show people (CCTV in the EU), so the cloud keeps them only ``snapshot_keep_days`` and
shows them only for sites listed in ``[dashboard] snapshot_sites``. ``purge_expired`` runs inside
``DashboardServer`` (at start and hourly) and deletes image files past that age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from cloud.fleet.records import Prediction

log = logging.getLogger("parkwatch.dashboard.snapshots")


def visible(cfg: CloudConfig, pred: Prediction | Mapping[str, Any], now: float) -> bool:
    """Pure policy: may this prediction's snapshot be shown (site opted in, not past retention)?
    ``pred`` is the store's record or the lineage document's prediction."""
    site, ts = (pred.site, pred.ts) if isinstance(pred, Prediction) else (pred.get("site"), pred["ts"])
    return (
        site in cfg.dashboard.snapshot_sites and now - float(ts) <= cfg.dashboard.snapshot_keep_days * 86400
    )


def purge_expired(folder: Path, keep_days: float, now: float | None = None) -> int:
    """Delete ``*.jpg`` in ``folder`` older than ``keep_days`` (by file time); returns how many."""
    if not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - keep_days * 86400
    removed = 0
    for path in folder.glob("*.jpg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot delete expired snapshot %s: %s", path, e)
    if removed:
        log.info("deleted %d snapshot(s) older than %.0f days from %s", removed, keep_days, folder)
    return removed
