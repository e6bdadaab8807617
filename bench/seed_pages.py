"""Issue 13: fill a fleet store with N devices and H hours of telemetry in minutes, not hours.

Filling 10,000 devices x 24 h through the ingest writer one message at a time took about 1.5 h
on a 2-core machine. This writes the same rows faster, without writing them any differently:

* the bulk (every telemetry sample but each device's last) is built by the writer's own row
  function (``cloud.fleet.rows.telemetry_row``, from validated ``Telemetry`` messages) and loaded
  with one ``COPY`` on PostgreSQL (into the day partitions the writer itself creates) or one
  ``executemany`` in one transaction on SQLite, the writer's ``INSERT OR IGNORE`` statement;
* everything else goes through the real batch writer (``open_writer``): each device's status,
  model state, last telemetry sample, its predictions and (for ``offline`` devices) its
  last-will. So ``devices`` (last seen, model, status, update state, max_seq, totals),
  ``status_events``, ``model_states``, ``predictions``, ``outcome_hours`` and ``counters`` hold
  exactly what ingest would leave; the bulk rows only add history that nothing summarises
  (the writer keeps no per-device aggregate of telemetry but what the last sample sets).

Device i is ``box{i:04d}`` at ``sites[i % len(sites)]``, as ``tests.dashutil.seed_fleet`` names
them, so the dashboard benchmark reads the same fleet whichever way it was filled.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.config import CloudConfig

STEP_S = 10.0  # edge/config.py TelemetryConfig.interval_s: a box reports every 10 s by default
# Measured on a seeded SQLite store: ~870 bytes of message body, ~1.15 KB a telemetry row with
# its key; PostgreSQL stores the same text uncompressed (under the TOAST threshold).
BYTES_PER_SAMPLE = 1200


def check_disk(folder: Path, devices: int, hours: float, step_s: float) -> None:
    """Refuse a fill that would not fit: at the box's 10 s interval 10,000 devices x 24 h are
    86.4 M samples, about 100 GB, more than a development machine has to spare."""
    need = devices * (int(hours * 3600 / step_s) + 1) * BYTES_PER_SAMPLE
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > 0.8 * free:
        raise SystemExit(
            f"filling {devices} devices x {hours:g} h at one sample every {step_s:g} s needs about "
            f"{need / 1e9:.0f} GB, and {folder} has {free / 1e9:.0f} GB free: pass a longer step "
            "(--step / --pages-step 60 is one sample a minute), fewer hours or devices, or a "
            "folder on a larger disk (--keep DIR, TMPDIR)"
        )


def _telemetry(i: int, dev: str, site: str, s: int, ts: float, step_s: float, hot: bool) -> Any:
    """Sample ``s`` of device ``i``: its values depend on (i, s) alone, so the bulk path and the
    writer path (``bulk=False``) build the very same messages in whatever order they go."""
    from shared.protocol import Telemetry

    rng = random.Random(i * 1_000_003 + s)
    temp = 85.0 if hot else 48 + 6 * rng.random()
    return Telemetry(
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
        latency_ms={"p50": 14 + rng.random(), "p95": 20 + rng.random(), "p99": 25 + 5 * rng.random()},
        inference_fps=5.0,
        model_version="m1",
        outbox_backlog=rng.randint(0, 3),
        cameras={
            "cam1": {"state": "streaming", "fps": 5 + rng.random()},
            "cam2": {"state": "streaming", "fps": 4 + rng.random()},
        },
    )


def seed_bulk(
    cfg: CloudConfig,
    devices: int,
    hours: float,
    step_s: float = STEP_S,
    predictions: int = 0,
    sites: tuple[str, ...] = ("park1", "park2"),
    offline: tuple[int, ...] = (),
    hot: tuple[int, ...] = (),
    now: float | None = None,
    chunk: int = 200_000,
    progress: bool = False,
    bulk: bool = True,
) -> list[str]:
    """Fill ``cfg``'s fleet store (empty); returns the device names. ``predictions`` per device
    are spread evenly over the window (seqs 1..n, 100 per batch, every 5th an abstention with a
    snapshot), so the outcome counts cover the whole day. ``bulk=False`` sends every message
    through the writer instead (slow; what tests compare the bulk path against)."""
    from cloud.fleet.backends import is_pg, open_writer
    from cloud.fleet.rows import TEL_COLS, telemetry_row
    from cloud.fleet.schema import connect
    from cloud.fleet.writer import BatchWriter, Incoming
    from shared.protocol import (
        DeviceStatus,
        Kind,
        ModelState,
        Prediction,
        PredictionBatch,
        Topics,
        parse_topic,
    )

    now = time.time() if now is None else now
    steps = int(hours * 3600 / step_s)
    t0 = now - steps * step_s
    pg = is_pg(cfg.fleet_store)
    writer: Any = (
        open_writer(cfg.fleet_store) if pg else BatchWriter(connect(cfg.paths.fleet_db, synchronous="OFF"))
    )
    names = [f"box{i:04d}" for i in range(devices)]

    def bulk_rows() -> Iterator[tuple[object, ...]]:
        for i, dev in enumerate(names):
            site = sites[i % len(sites)]
            for s in range(steps):  # the last sample (s == steps) goes through the writer
                ts = t0 + s * step_s
                yield telemetry_row(_telemetry(i, dev, site, s, ts, step_s, i in hot), ts)

    started = time.perf_counter()
    n = 0

    def said(k: int) -> None:
        if progress:
            print(f"  {k:,} telemetry rows ({time.perf_counter() - started:.0f} s)", flush=True)

    if bulk and pg:
        from cloud.fleet.backends.pg_writer import day_of

        writer.ensure_days("telemetry", {day_of(t0 + k * 86400) for k in range(int(hours / 24) + 2)})
        conn = writer.conn
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY telemetry ({TEL_COLS}, day) FROM STDIN") as cp,
        ):
            for r in bulk_rows():
                cp.write_row((*r, day_of(r[-1])))  # type: ignore[arg-type]  # received_ts: a float
                n += 1
                if n % chunk == 0:
                    said(n)
    elif bulk:
        marks = ",".join("?" * len(TEL_COLS.split(",")))
        sql = f"INSERT OR IGNORE INTO telemetry({TEL_COLS}) VALUES ({marks})"
        c = writer.conn
        with c:  # one transaction
            buf: list[tuple[object, ...]] = []
            for r in bulk_rows():
                buf.append(r)
                if len(buf) >= chunk:
                    c.executemany(sql, buf)
                    n += len(buf)
                    buf.clear()
                    said(n)
            c.executemany(sql, buf)
            n += len(buf)

    # The rest through the real writer, device by device in message order.
    items: list[Any] = []

    def put(site: str, dev: str, kind: Kind, msg: Any, received: float) -> None:
        items.append(Incoming(parse_topic(Topics.device(site, dev, kind)), msg, received))
        if len(items) >= 2000:
            writer.write(items)
            items.clear()

    for i, dev in enumerate(names):
        site = sites[i % len(sites)]
        state = {"device": dev, "site": site, "group": "production"}
        put(
            site,
            dev,
            Kind.STATUS,
            DeviceStatus(**state, state="online", software="0.1.0", model_version="m1", ts=t0),
            t0,
        )
        put(
            site,
            dev,
            Kind.MODEL_STATE,
            ModelState(**state, state="active", version="m1", active_version="m1", ts=t0),
            t0,
        )
        for s in range(0 if not bulk else steps, steps + 1):
            ts = t0 + s * step_s
            put(site, dev, Kind.TELEMETRY, _telemetry(i, dev, site, s, ts, step_s, i in hot), ts)
            n += 1
        span = steps * step_s or 1.0
        for k0 in range(0, predictions, 100):
            preds = [
                Prediction(
                    seq=k + 1,
                    ts=t0 + span * k / predictions,
                    camera="cam1" if k % 3 else "cam2",
                    label="abstain" if k % 5 == 0 else ("cat" if k % 2 else "dog"),
                    confidence=0.55 if k % 5 == 0 else 0.95,
                    model_version="m1",
                    abstain=k % 5 == 0,
                    snapshot=f"{dev}-snap-{k + 1}" if k % 5 == 0 else None,
                )
                for k in range(k0, min(k0 + 100, predictions))
            ]
            put(site, dev, Kind.PREDICTIONS, PredictionBatch(device=dev, site=site, predictions=preds), now)
        if i in offline:
            put(
                site,
                dev,
                Kind.STATUS,
                DeviceStatus(**state, state="offline", reason="last-will", ts=now - 1),
                now - 1,
            )
    if items:
        writer.write(items)
    writer.db.close()
    if progress:
        print(f"  {n:,} telemetry rows in all ({time.perf_counter() - started:.0f} s)", flush=True)
    return names
