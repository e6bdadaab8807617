"""Fleet overview: every device with liveness, health and its reasons, model and update state,
CPU and temperature trends, cameras and outbox backlog; filter, sort, page, live refresh."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.analysis.health import liveness
from cloud.dashboard.charts import sparkline
from cloud.dashboard.web import render, require, services
from cloud.fleet.records import Device, DeviceBrief, Outcomes, TelemetryRow
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


def _camera_states(latest: TelemetryRow | None) -> dict[str, str]:
    body = latest.body if latest else {}
    cams = body.get("cameras") if isinstance(body, dict) else None
    return {name: str(c.get("state", "?")) for name, c in (cams or {}).items()}


@dataclasses.dataclass(slots=True)
class FleetRow:
    """One line of the fleet table: the device (its brief columns for every device, its whole
    row for the rows of the page shown), its liveness now, and (for the shown rows, or for every
    row when sorting by a live figure) its latest figures and trends."""

    dev: Device | DeviceBrief
    live: str
    live_why: str | None
    health_cls: str
    cpu: float | None = None
    temp: float | None = None
    backlog: int | None = None
    cameras: dict[str, str] = dataclasses.field(default_factory=dict)
    outcomes: Outcomes | None = None
    cpu_spark: str = ""
    temp_spark: str = ""

    def sort_value(self, col: str) -> Any:
        if col == "live":
            return self.live
        if col in ("cpu", "temp", "backlog"):
            return getattr(self, col)
        return getattr(self.dev, col)


def fleet_rows(
    request: Request, site: str, status: str, health: str, q: str, sort: str, desc: bool, page: int
) -> dict[str, Any]:
    svc = services(request)
    store = svc.get_fleet()
    now = time.time()
    timeout = svc.cfg.fleet.heartbeat_timeout_s
    # Every device, but only the columns counted, filtered and sorted on: at 10,000 devices the
    # full rows were most of the page's time. The shown page's full rows are read below.
    devices = []
    for brief in store.devices_brief():
        live, why = liveness(brief, now, timeout)
        devices.append(FleetRow(brief, live, why, health_class(brief.health)))
    sites = sorted({d.dev.site for d in devices})
    counts = {
        "devices": len(devices),
        "online": sum(d.live == "online" for d in devices),
        "offline": sum(d.live == "offline" for d in devices),
        "unhealthy": sum(d.health_cls in ("warn", "bad") for d in devices),
        "updating": sum(
            (d.dev.update_state or "") in ("downloading", "verifying", "self-testing") for d in devices
        ),
        "failed": sum((d.dev.update_state or "") == "failed" for d in devices),
    }
    shown = [
        d
        for d in devices
        if (not site or d.dev.site == site)
        and (not status or d.live == status)
        and (not health or (d.dev.health or "unknown") == health)
        and (not q or q.lower() in f"{d.dev.device} {d.dev.site} {d.dev.model_version or ''}".lower())
    ]
    healths = sorted({d.dev.health or "unknown" for d in devices})
    size = svc.cfg.dashboard.page_size
    pages = max(1, (len(shown) + size - 1) // size)
    page = min(max(page, 1), pages)
    # Sorting by live figures needs them for every row (one query); the per-device telemetry
    # queries run for the shown page only.
    live_sort = sort in ("cpu", "temp", "backlog")
    if live_sort:
        figures = store.latest_figures()  # one query for all, not one per device
        for d in shown:
            f = figures.get(d.dev.device)
            d.cpu, d.temp, d.backlog = (
                (f.cpu_percent, f.temp_max, f.outbox_backlog) if f else (None, None, None)
            )
    rows = _sorted(shown, sort, desc)[size * (page - 1) : size * page]
    # The shown page's whole rows, in one query; a device gone since the brief read is left out.
    full = {dev.device: dev for dev in store.devices_named([d.dev.device for d in rows])}
    rows = [d for d in rows if d.dev.device in full]
    for d in rows:
        d.dev = full[d.dev.device]
    names = [d.dev.device for d in rows]
    latests = store.latest_telemetry_of(names)
    trends = store.telemetry_of(names, since=now - TREND_WINDOW_S, limit=120)
    for d in rows:
        latest = latests.get(d.dev.device)
        d.cpu = latest.cpu_percent if latest else None
        d.temp = latest.temp_max if latest else None
        d.backlog = latest.outbox_backlog if latest else None
        d.cameras = _camera_states(latest)
    seen = store.outcomes_by_device(names, since=now - TREND_WINDOW_S)
    for d in rows:
        d.outcomes = seen.get(d.dev.device)
        trend = trends[d.dev.device]
        d.cpu_spark = sparkline([t.cpu_percent for t in trend], label=f"CPU % last hour, {d.dev.device}")
        d.temp_spark = sparkline(
            [t.temp_max for t in trend],
            label=f"temperature last hour, {d.dev.device}",
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


def _sorted(rows: list[FleetRow], sort: str, desc: bool) -> list[FleetRow]:
    key = sort if sort in SORTS else "site"
    col = "live" if key == "status" else key

    def k(d: FleetRow) -> tuple[bool, Any, str]:
        v = d.sort_value(col)
        return (v is None, v if v is not None else 0, d.dev.device)

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
