"""Snapshots for labelling over the real broker: kept only for opted-in sites, never overwritten."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import cv2
import numpy as np

from cloud.fleet.ingest_worker import FleetIngest
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, Snapshot
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice


def _jpeg(value: int) -> str:
    ok, buf = cv2.imencode(".jpg", np.full((32, 32, 3), value, dtype=np.uint8))
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def test_snapshots_stored_only_for_allowed_sites(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = cloud_cfg(tmp_path, broker, dashboard={"snapshot_sites": ["open-park"]})
    ingest = FleetIngest(cfg)
    ingest.start()
    allowed = SimDevice("127.0.0.1", broker.port, site="open-park", device="box1").connect()
    other = SimDevice("127.0.0.1", broker.port, site="open-park", device="box2").connect()
    closed = SimDevice("127.0.0.1", broker.port, site="closed-park", device="box3").connect()
    try:
        assert ingest.wait_connected()

        def snap(dev: SimDevice, sid: str, jpeg: str) -> None:
            dev.publish(
                Kind.SNAPSHOT,
                Snapshot(device=dev.device, site=dev.site, id=sid, camera="cam1", ts=time.time(), jpeg=jpeg),
            )
            dev.flush()

        first = _jpeg(10)
        snap(allowed, "cam1-1-aaaa", first)
        snap(other, "cam1-1-aaaa", _jpeg(200))  # same id from another box: must not replace it
        snap(closed, "cam1-2-bbbb", _jpeg(30))  # site not opted in: never kept
        snap(allowed, "cam1-3-cccc", base64.b64encode(b"not a jpeg").decode())
        wait_for(lambda: sum(ingest.stats()["snapshots"].values()) >= 4, 20, "four snapshots handled")
        folder = cfg.paths.snapshots_dir
        assert sorted(p.name for p in folder.iterdir()) == ["cam1-1-aaaa.jpg"]
        assert (folder / "cam1-1-aaaa.jpg").read_bytes() == base64.b64decode(first)
        assert ingest.stats()["snapshots"] == {"stored": 1, "exists": 1, "site_not_allowed": 1, "not_jpeg": 1}
    finally:
        for d in (allowed, other, closed):
            d.disconnect()
        ingest.stop()
