"""Snapshot images arriving from boxes: kept only for opted-in sites, never overwritten.

CCTV frames can show people and the park is in the EU, so two gates apply: the box sends a
snapshot only when its own ``[snapshots] upload_allowed`` says so, and the cloud keeps it only
for sites listed in ``[dashboard] snapshot_sites`` — anything else is dropped and counted.
Retention (``snapshot_keep_days``) is enforced by the dashboard's purge.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

from cloud.config import CloudConfig
from shared.atomic import atomic_write_bytes
from shared.protocol import Snapshot

Outcome = Literal["stored", "exists", "site_not_allowed", "not_jpeg"]


def snapshots_dir(cfg: CloudConfig) -> Path:
    return cfg.fleet.snapshots_dir or cfg.data_dir / "snapshots"


def store_snapshot(cfg: CloudConfig, msg: Snapshot) -> Outcome:
    """Write ``<snapshots_dir>/<id>.jpg`` atomically; first writer wins so no box can replace
    another box's image by reusing its id."""
    if msg.site not in cfg.dashboard.snapshot_sites:
        return "site_not_allowed"
    try:
        data = base64.b64decode(msg.jpeg, validate=True)
    except (binascii.Error, ValueError):
        return "not_jpeg"
    if not data.startswith(b"\xff\xd8"):
        return "not_jpeg"
    path = snapshots_dir(cfg) / f"{msg.id}.jpg"
    if path.exists():
        return "exists"
    atomic_write_bytes(path, data)
    return "stored"
