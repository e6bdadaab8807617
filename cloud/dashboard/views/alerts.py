"""Alerts: open, acknowledged, resolved; acknowledge with a comment (through the AlertStore)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from cloud.dashboard.deps import Services
from cloud.dashboard.web import form, redirect, render, require, run_change, services
from cloud.governance.records import StoredAlert

router = APIRouter()
STATES = ("open", "acknowledged", "resolved")


def list_alerts(svc: Services, state: str | None, device: str | None = None) -> list[StoredAlert]:
    return svc.get_alerts().list(state=state or None, device=device, limit=500)


@router.get("/alerts")
def alerts_page(request: Request, state: str = "open") -> Response:
    require(request)
    svc = services(request)
    state = state if state in (*STATES, "all") else "open"
    alerts = list_alerts(svc, None if state == "all" else state)
    counts = {s: len(list_alerts(svc, s)) for s in STATES}
    template = "alerts_live.html.j2" if request.headers.get("hx-request") == "true" else "alerts.html.j2"
    return render(
        request,
        template,
        title="Alerts",
        alerts=alerts,
        state=state,
        states=STATES,
        counts=counts,
    )


@router.post("/alerts/{alert_id}/{action}")
async def transition(request: Request, alert_id: str, action: str) -> Response:
    """Acknowledge (someone is on it) or resolve (fixed, or not a problem), with a comment.

    The governance service layer does it, as `parkwatch cloud alerts ack|resolve` does: the state
    change, an audit entry under the signed-in user, and the new state published on MQTT.
    """
    from cloud.governance.engine import ack_alert, resolve_alert

    fns = {"ack": (ack_alert, "acknowledged"), "resolve": (resolve_alert, "resolved")}
    if action not in fns:
        raise HTTPException(404, f"no alert action {action!r}; use ack or resolve")
    u = require(request, "ack_alert")
    f = await form(request)
    comment = f.get("comment", "").strip()
    if not comment:
        return redirect("/alerts", request, "Say what you did or will do in the comment.")
    svc = services(request)
    fn, done = fns[action]
    await run_change(
        request,
        fn,
        svc.get_alerts(),
        alert_id,
        u.name,
        comment,
        audit=svc.get_audit(),
        publisher=svc.get_alert_publisher(),
    )
    return redirect("/alerts", request, f"Alert {alert_id} {done}.")
