"""Fleet overview: every device with liveness, health and its reasons, model and update state,
CPU and temperature trends, cameras and outbox backlog; filter, sort, page, live refresh."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.analysis.health import liveness
from cloud.dashboard.charts import sparkline
from cloud.dashboard.web import render, require, services
from cloud.fleet.workers import workers_in

router = APIRouter()

SORTS = ("site", "device", "status", "health", "last_seen", "model_version", "cpu", "temp", "backlog")
TREND_WINDOW_S = 3600.0


def health_class(state: str | None) -> str:
    s = (state or "").lower()
    if s in ("ok", "healthy", "good"):
        return "ok"
    if s in ("", "unknown"):
        return "neutral"
    if s in ("warning", "degraded", "warn"):
        return "warn"
    return "bad"


def _camera_states(latest: dict[str, Any] | None) -> dict[str, str]:
    body = (latest or {}).get("body") or {}
    cams = body.get("cameras") if isinstance(body, dict) else None
    return {name: str(c.get("state", "?")) for name, c in (cams or {}).items()}


def fleet_rows(
    request: Request, site: str, status: str, health: str, q: str, sort: str, desc: bool, page: int
) -> dict[str, Any]:
    svc = services(request)
    store = svc.get_fleet()
    now = time.time()
    timeout = svc.cfg.fleet.heartbeat_timeout_s
    # Every device, but only the columns counted, filtered and sorted on: at 10,000 devices the
    # full rows were most of the page's time. The shown page's full rows are read below.
    devices = store.devices_brief()
    for d in devices:
        d["live"], d["live_why"] = liveness(d, now, timeout)
        d["health_cls"] = health_class(d.get("health"))
    sites = sorted({d["site"] for d in devices})
    counts = {
        "devices": len(devices),
        "online": sum(d["live"] == "online" for d in devices),
        "offline": sum(d["live"] == "offline" for d in devices),
        "unhealthy": sum(d["health_cls"] in ("warn", "bad") for d in devices),
        "updating": sum(
            (d.get("update_state") or "") in ("downloading", "verifying", "self-testing") for d in devices
        ),
        "failed": sum((d.get("update_state") or "") == "failed" for d in devices),
    }
    shown = [
        d
        for d in devices
        if (not site or d["site"] == site)
        and (not status or d["live"] == status)
        and (not health or (d.get("health") or "unknown") == health)
        and (not q or q.lower() in f"{d['device']} {d['site']} {d.get('model_version') or ''}".lower())
    ]
    healths = sorted({d.get("health") or "unknown" for d in devices})
    size = svc.cfg.dashboard.page_size
    pages = max(1, (len(shown) + size - 1) // size)
    page = min(max(page, 1), pages)
    # Sorting by live figures needs them for every row (one query); the per-device telemetry
    # queries run for the shown page only.
    live_sort = sort in ("cpu", "temp", "backlog")
    if live_sort:
        figures = store.latest_figures()  # one query for all, not one per device
        for d in shown:
            f = figures.get(d["device"]) or {}
            d["cpu"], d["temp"], d["backlog"] = (
                f.get("cpu_percent"),
                f.get("temp_max"),
                f.get("outbox_backlog"),
            )
    rows = _sorted(shown, sort, desc)[size * (page - 1) : size * page]
    full = {r["device"]: r for r in store.devices_named([d["device"] for d in rows])}
    rows = [{**full.get(d["device"], {}), **d} for d in rows]
    names = [d["device"] for d in rows]
    latests = store.latest_telemetry_of(names)
    trends = store.telemetry_of(names, since=now - TREND_WINDOW_S, limit=120)
    for d in rows:
        latest = latests.get(d["device"])
        d["cpu"] = latest.get("cpu_percent") if latest else None
        d["temp"] = latest.get("temp_max") if latest else None
        d["backlog"] = latest.get("outbox_backlog") if latest else None
        d["cameras"] = _camera_states(latest)
    seen = store.outcomes_by_device(names, since=now - TREND_WINDOW_S)
    for d in rows:
        d["outcomes"] = seen.get(d["device"])
        trend = trends[d["device"]]
        d["cpu_spark"] = sparkline([t["cpu_percent"] for t in trend], label=f"CPU % last hour, {d['device']}")
        d["temp_spark"] = sparkline(
            [t["temp_max"] for t in trend],
            label=f"temperature last hour, {d['device']}",
            y_min=20.0,
            y_max=90.0,
        )
    return {
        "rows": rows,
        "counts": counts,
        "outcomes": store.outcomes(since=now - TREND_WINDOW_S),
        "sites": sites,
        "healths": healths,
        "pages": pages,
        "page": page,
        "total": len(shown),
    }


def _sorted(rows: list[dict[str, Any]], sort: str, desc: bool) -> list[dict[str, Any]]:
    key = sort if sort in SORTS else "site"
    col = "live" if key == "status" else key

    def k(d: dict[str, Any]) -> tuple[int, Any, str]:
        v = d.get(col)
        return (v is None, v if v is not None else 0, d["device"])

    return sorted(rows, key=k, reverse=desc)


@router.get("/")
def fleet_page(
    request: Request,
    site: str = "",
    status: str = "",
    health: str = "",
    q: str = "",
    sort: str = "site",
    desc: bool = False,
    page: int = 1,
) -> Response:
    require(request)
    data = fleet_rows(request, site, status, health, q, sort, desc, page)
    if request.headers.get("hx-request") != "true":
        svc = services(request)
        # Ingest workers on every host, from their heartbeat rows in the fleet store.
        data["workers"] = workers_in(svc.get_fleet(), svc.cfg.fleet.worker_stale_s)
    params = {"site": site, "status": status, "health": health, "q": q, "sort": sort, "desc": desc}
    template = "fleet_live.html.j2" if request.headers.get("hx-request") == "true" else "fleet.html.j2"
    return render(request, template, title="Fleet", params=params, sorts=SORTS, **data)
