"""Shared parts of the dashboard tests: a cloud config on temp files, one user per role, and
signing in through the real sign-in form (with its CSRF token) of the real app."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from cloud.config import CloudConfig
from cloud.dashboard.app import create_app
from cloud.dashboard.users import UserStore

ROLES = ("viewer", "engineer", "approver", "admin")
_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def password_for(role: str) -> str:
    return f"pw-{role}-correct-horse"


def make_cfg(tmp_path: Path, **sections: dict[str, Any]) -> CloudConfig:
    from tests.fleetutil import fleet_section

    data: dict[str, Any] = {"data_dir": str(tmp_path / "cloud")}
    if fleet_section():
        data["fleet"] = fleet_section()
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return CloudConfig.model_validate(data)


def seed_users(cfg: CloudConfig) -> None:
    store = UserStore(cfg.paths.dashboard_db)
    for role in ROLES:
        if store.find(role) is None:
            store.add(role, role, password_for(role))
    store.close()


def csrf_of(html: str) -> str:
    m = _META.search(html)
    assert m, "page carries no CSRF meta tag"
    return m.group(1)


def client_for(cfg: CloudConfig, **deps: Any) -> TestClient:
    return TestClient(create_app(cfg, secret=b"test-secret-test-secret-1234", **deps))


def sign_in(client: TestClient, name: str, password: str | None = None) -> str:
    """Sign in through the form; returns the new session's CSRF token."""
    page = client.get("/login")
    r = client.post(
        "/login",
        data={
            "username": name,
            "password": password or password_for(name),
            "csrf_token": csrf_of(page.text),
            "next": "/audit",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/audit").text)


def seed_fleet(
    cfg: CloudConfig,
    devices: int = 3,
    hours: float = 2.0,
    step_s: float = 60.0,
    sites: tuple[str, ...] = ("park1", "park2"),
    now: float | None = None,
    predictions: int = 0,
    offline: tuple[int, ...] = (),
    hot: tuple[int, ...] = (),
) -> list[str]:
    """Write a fleet through the real ingest writer (the code path MQTT messages take).

    Device i is ``box{i:04d}`` at ``sites[i % len(sites)]``; ``offline`` devices sent their
    last-will; ``hot`` devices run at 85 °C. Returns the device names.
    """
    import random
    import time as _time

    from cloud.fleet.backends import is_pg, open_writer
    from cloud.fleet.schema import connect
    from cloud.fleet.writer import BatchWriter, Incoming
    from shared.protocol import (
        DeviceStatus,
        Kind,
        ModelState,
        Prediction,
        PredictionBatch,
        Telemetry,
        Topics,
        parse_topic,
    )

    rng = random.Random(7)
    now = _time.time() if now is None else now
    writer = (
        open_writer(cfg.fleet_store)
        if is_pg(cfg.fleet_store)
        else BatchWriter(connect(cfg.paths.fleet_db, synchronous="OFF"))
    )
    db = writer.db
    names: list[str] = []
    items: list[Incoming] = []

    def put(site: str, dev: str, kind: Kind, msg: Any, ts: float) -> None:
        items.append(Incoming(parse_topic(Topics.device(site, dev, kind)), msg, ts))
        if len(items) >= 5000:
            writer.write(items)
            items.clear()

    steps = int(hours * 3600 / step_s)
    for i in range(devices):
        site, dev = sites[i % len(sites)], f"box{i:04d}"
        names.append(dev)
        t0 = now - steps * step_s
        put(
            site,
            dev,
            Kind.STATUS,
            DeviceStatus(
                device=dev,
                site=site,
                state="online",
                group="production",
                software="0.1.0",
                model_version="m1",
                ts=t0,
            ),
            t0,
        )
        put(
            site,
            dev,
            Kind.MODEL_STATE,
            ModelState(
                device=dev,
                site=site,
                group="production",
                state="active",
                version="m1",
                active_version="m1",
                ts=t0,
            ),
            t0,
        )
        for s in range(steps + 1):
            ts = t0 + s * step_s
            temp = 85.0 if i in hot else 48 + 6 * rng.random()
            put(
                site,
                dev,
                Kind.TELEMETRY,
                Telemetry(
                    device=dev,
                    site=site,
                    ts=ts,
                    seq=s,
                    cpu_percent=20 + 30 * rng.random(),
                    memory_percent=40 + 5 * rng.random(),
                    disk_percent=30.0,
                    temperatures={"cpu": temp},
                    uptime_process_s=s * step_s,
                    uptime_system_s=s * step_s + 100,
                    latency_ms={
                        "p50": 14 + rng.random(),
                        "p95": 20 + rng.random(),
                        "p99": 25 + 5 * rng.random(),
                    },
                    inference_fps=5.0,
                    model_version="m1",
                    outbox_backlog=rng.randint(0, 3),
                    cameras={
                        "cam1": {"state": "streaming", "fps": 5 + rng.random()},
                        "cam2": {"state": "streaming", "fps": 4 + rng.random()},
                    },
                ),
                ts,
            )
        if predictions:
            preds = [
                Prediction(
                    seq=k + 1,
                    ts=now - predictions + k,
                    camera="cam1",
                    label="abstain" if k % 5 == 0 else ("cat" if k % 2 else "dog"),
                    confidence=0.55 if k % 5 == 0 else 0.95,
                    model_version="m1",
                    abstain=k % 5 == 0,
                    snapshot=f"{dev}-snap-{k + 1}" if k % 5 == 0 else None,
                )
                for k in range(predictions)
            ]
            put(site, dev, Kind.PREDICTIONS, PredictionBatch(device=dev, site=site, predictions=preds), now)
        if i in offline:
            put(
                site,
                dev,
                Kind.STATUS,
                DeviceStatus(
                    device=dev, site=site, state="offline", group="production", reason="last-will", ts=now - 1
                ),
                now - 1,
            )
    if items:
        writer.write(items)
    db.close()
    return names


def write_snapshot_jpeg(
    cfg: CloudConfig, snapshot: str, colour: tuple[int, int, int] = (90, 140, 60)
) -> Path:
    """A real JPEG where fleet ingest keeps snapshot images (``<snapshots_dir>/<id>.jpg``)."""
    import cv2
    import numpy as np

    folder = cfg.fleet.snapshots_dir or cfg.data_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    img = np.zeros((120, 160, 3), dtype=np.uint8)
    img[:] = colour
    cv2.putText(img, snapshot[-6:], (8, 64), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    path = folder / f"{snapshot}.jpg"
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path
