"""One device: telemetry charts over a chosen window, model-state history, its alerts and gaps."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard.charts import Series, line_chart
from cloud.dashboard.errors import ServiceUnavailable
from cloud.dashboard.views.fleet import health_class, liveness
from cloud.dashboard.web import render, require, services

router = APIRouter()

WINDOWS = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


def device_charts(rows: list[dict[str, Any]], cfg_analysis: Any) -> list[Any]:
    def s(label: str, col: str) -> Series:
        return Series(label, [(r["ts"], r[col]) for r in rows if r.get(col) is not None])

    fps: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        body = r.get("body") if isinstance(r.get("body"), dict) else {}
        for cam, c in (body.get("cameras") or {}).items():
            fps.setdefault(cam, []).append((r["ts"], float(c.get("fps", 0.0))))
    return [
        line_chart([s("CPU", "cpu_percent")], title="CPU", unit="%", y_min=0, y_max=100,
                   thresholds=[("limit", cfg_analysis.max_cpu_percent)]),
        line_chart([s("hottest sensor", "temp_max")], title="Temperature", unit="°C",
                   thresholds=[("limit", cfg_analysis.max_temperature_c)]),
        line_chart([s("memory", "memory_percent")], title="Memory", unit="%", y_min=0, y_max=100,
                   thresholds=[("limit", cfg_analysis.max_memory_percent)]),
        line_chart([s("p50", "latency_p50"), s("p99", "latency_p99")], title="Inference latency", unit="ms",
                   y_min=0),
        line_chart([Series(cam, pts) for cam, pts in sorted(fps.items())] or [s("all cameras", "inference_fps")],
                   title="Frames per second per camera", unit="fps", y_min=0),
    ]


@router.get("/devices/{device}")
def device_page(request: Request, device: str, window: str = "6h") -> Response:
    require(request)
    svc = services(request)
    store = svc.get_fleet()
    dev = store.device(device)
    now = time.time()
    span = WINDOWS.get(window, WINDOWS["6h"])
    dev["live"], dev["live_why"] = liveness(dev, now, svc.cfg.fleet.heartbeat_timeout_s)
    dev["health_cls"] = health_class(dev.get("health"))
    rows = store.telemetry(device, since=now - span, full=True, limit=20_000)
    latest = rows[-1] if rows else store.latest_telemetry(device)
    try:
        alerts = _alerts_for(svc, device)
        alerts_error = None
    except ServiceUnavailable as e:
        alerts, alerts_error = [], str(e)
    return render(
        request, "device.html.j2", title=f"Device {device}", d=dev, window=window, windows=list(WINDOWS),
        charts=device_charts(rows, svc.cfg.analysis), n_points=len(rows), latest=latest,
        model_states=store.model_states(device, limit=50), status_events=store.status_events(device, limit=20),
        gaps=store.gaps(device), alerts=alerts, alerts_error=alerts_error,
    )


def _alerts_for(svc: Any, device: str) -> list[dict[str, Any]]:
    from cloud.dashboard.views.alerts import list_alerts

    return list_alerts(svc, None, device=device)
