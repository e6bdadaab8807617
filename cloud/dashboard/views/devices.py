"""One device: telemetry charts over a chosen window, model-state history, its alerts and gaps."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.analysis.health import liveness
from cloud.dashboard.charts import Series, line_chart
from cloud.dashboard.regions import decorate
from cloud.dashboard.views.fleet import health_class
from cloud.dashboard.web import render, require, services
from cloud.fleet.records import DriftResult
from cloud.fleet.store import FleetStore
from cloud.governance.records import StoredAlert

router = APIRouter()

WINDOWS = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
MAX_POINTS = 720
RECENT_PREDICTIONS = 20

_SERIES_SQL = (
    "SELECT min(ts) AS ts, avg(cpu_percent) AS cpu_percent, max(temp_max) AS temp_max, "
    "avg(memory_percent) AS memory_percent, avg(latency_p50) AS latency_p50, "
    "max(latency_p99) AS latency_p99, "
    "avg(inference_fps) AS inference_fps, count(*) AS samples "
    "FROM telemetry WHERE device = ? AND ts >= ? GROUP BY CAST(ts / ? AS INTEGER) ORDER BY 1"
)
# One aggregate only, so SQLite takes the bare column from the bucket's newest row.
_CAMERAS_SQL = (
    "SELECT max(ts) AS ts, json_extract(body, '$.cameras') AS cams "
    "FROM telemetry WHERE device = ? AND ts >= ? GROUP BY CAST(ts / ? AS INTEGER) ORDER BY 1"
)


# The same figures on PostgreSQL: no bare columns in an aggregate query there, so the bucket's
# newest body is picked explicitly; floor() because a float-to-integer cast rounds there.
_SERIES_SQL_PG = _SERIES_SQL.replace("CAST(ts / ? AS INTEGER)", "floor(ts / ?)")
_CAMERAS_SQL_PG = (
    "SELECT max(ts) AS ts, ((array_agg(body ORDER BY ts DESC))[1])::jsonb -> 'cameras' AS cams "
    "FROM telemetry WHERE device = ? AND ts >= ? GROUP BY floor(ts / ?) ORDER BY 1"
)


def telemetry_series(store: Any, device: str, since: float, span_s: float) -> list[dict[str, Any]]:
    """At most ~MAX_POINTS buckets over the window, whatever the telemetry rate: averages for
    load figures, maxima for temperature and p99 (a spike must survive), and each bucket's newest
    per-camera figures. A week at a 10 s interval is 60,480 rows; the chart needs 720."""
    bucket = max(span_s / MAX_POINTS, 1.0)
    pg = getattr(store, "dialect", "sqlite") == "postgresql"
    rows: list[dict[str, Any]] = store.query(_SERIES_SQL_PG if pg else _SERIES_SQL, (device, since, bucket))
    cams = store.query(_CAMERAS_SQL_PG if pg else _CAMERAS_SQL, (device, since, bucket))
    for r, c in zip(rows, cams, strict=False):
        v = c.get("cams")
        r["cameras"] = (json.loads(v) if isinstance(v, str) else v) if v else {}
    return rows


def fps_floor(values: list[float], z: float, history: int) -> float | None:
    """Where ``telemetry_anomaly`` starts flagging a box's frame rate: the median of its last
    ``history`` samples minus ``z`` robust SDs (1.4826 x MAD); None with too little history."""
    recent = [v for v in values if v is not None][-history:]
    if len(recent) < 5:
        return None
    med = statistics.median(recent)
    mad = statistics.median(abs(v - med) for v in recent) * 1.4826
    scale = mad if mad >= 1e-9 else max(abs(med) * 0.01, 1.0)  # as robust_z does for a flat history
    return max(med - z * scale, 0.0)


def device_charts(
    rows: list[dict[str, Any]], cfg_analysis: Any, max_latency_p99_ms: float | None = None
) -> list[tuple[str, Any]]:
    """The device page's charts, each with the limit that judges it as a dashed line: CPU,
    temperature and memory from ``[analysis]``, p99 latency from ``release.max_latency_p99_ms``
    (a rollout is rolled back above it), frames per second from the ``telemetry_anomaly`` rule."""

    def s(label: str, col: str) -> Series:
        return Series(label, [(r["ts"], r[col]) for r in rows if r.get(col) is not None])

    fps: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        for cam, c in (r.get("cameras") or {}).items():
            fps.setdefault(cam, []).append((r["ts"], float(c.get("fps", 0.0))))
    floor = fps_floor(
        [r["inference_fps"] for r in rows if r.get("inference_fps") is not None],
        cfg_analysis.anomaly_z,
        cfg_analysis.anomaly_history,
    )
    charts = [
        line_chart(
            [s("CPU", "cpu_percent")],
            title="CPU",
            unit="%",
            y_min=0,
            y_max=100,
            thresholds=[("limit", cfg_analysis.max_cpu_percent)],
        ),
        line_chart(
            [s("hottest sensor", "temp_max")],
            title="Temperature",
            unit="°C",
            thresholds=[("limit", cfg_analysis.max_temperature_c)],
        ),
        line_chart(
            [s("memory", "memory_percent")],
            title="Memory",
            unit="%",
            y_min=0,
            y_max=100,
            thresholds=[("limit", cfg_analysis.max_memory_percent)],
        ),
        line_chart(
            [s("p50", "latency_p50"), s("p99", "latency_p99")],
            title="Inference latency",
            unit="ms",
            y_min=0,
            thresholds=[("p99 limit (rollback)", max_latency_p99_ms)] if max_latency_p99_ms else [],
        ),
        line_chart(
            [Series(cam, pts) for cam, pts in sorted(fps.items())] or [s("all cameras", "inference_fps")],
            title="Frames per second per camera",
            unit="fps",
            y_min=0,
            thresholds=[("anomaly limit (box)", floor)] if floor is not None else [],
        ),
    ]
    titles = ("CPU", "Temperature", "Memory", "Inference latency p50 / p99", "Frames per second per camera")
    return list(zip(titles, charts, strict=True))


@router.get("/devices/{device}")
def device_page(request: Request, device: str, window: str = "6h") -> Response:
    require(request)
    svc = services(request)
    store = svc.get_fleet()
    dev = store.device(device)
    now = time.time()
    span = WINDOWS.get(window, WINDOWS["6h"])
    live, live_why = liveness(dev, now, svc.cfg.fleet.heartbeat_timeout_s)
    rows = telemetry_series(store, device, now - span, span)
    latest = store.latest_telemetry(device)
    alerts = _alerts_for(svc, device)
    recent = [decorate(p) for p in store.predictions(device=device, limit=RECENT_PREDICTIONS)]
    return render(
        request,
        "device.html.j2",
        title=f"Device {device}",
        d=dev,
        live=live,
        live_why=live_why,
        health_cls=health_class(dev.health),
        window=window,
        windows=list(WINDOWS),
        charts=device_charts(rows, svc.cfg.analysis, svc.cfg.release.max_latency_p99_ms),
        n_points=sum(r["samples"] for r in rows),
        latest=latest,
        model_states=store.model_states(device, limit=50),
        status_events=store.status_events(device, limit=20),
        gaps=store.gaps(device),
        alerts=alerts,
        outcomes=store.outcomes(device=device, since=now - span),
        recent=recent,
        drift=_latest_drift(store, device),
        min_samples=svc.cfg.analysis.min_samples,
    )


def _latest_drift(store: FleetStore, device: str) -> DriftResult | None:
    """The newest analysis figures of this device (per lighting mode in ``details.modes``)."""
    rows = store.drift_results(device=device, limit=1)
    return rows[0] if rows else None


def _alerts_for(svc: Any, device: str) -> list[StoredAlert]:
    from cloud.dashboard.views.alerts import list_alerts

    return list_alerts(svc, None, device=device)
