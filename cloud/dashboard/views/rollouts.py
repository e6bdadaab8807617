"""Rollouts per device group: target version, devices per state, progress; start and roll back.

Starting and rolling back call ``cloud.release.rollout`` — the functions behind
``parkwatch cloud rollout`` and ``rollback`` — so a rollout from here obeys the same approval
rules and lands in the same audit log.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard import adapters
from cloud.dashboard.web import form, redirect, render, require, run_change, services

router = APIRouter()


def _view(request: Request, template: str) -> Response:
    svc = services(request)
    groups = adapters.rollout_status(svc)
    known = adapters.known_groups(svc)
    for g in groups:
        # "done" means active on the group's target version, as the release channel counts it.
        total, done = int(g.get("total") or 0), int(g.get("done") or 0)
        g["total_n"], g["done_n"] = total, done
        g["pct"] = 100.0 * done / total if total else 0.0
    versions = [m.version for m in svc.get_registry().list_models() if m.stage in ("staging", "production")]
    return render(request, template, title="Rollouts", groups=groups, versions=versions, known_groups=known)


@router.get("/rollouts")
def rollouts_page(request: Request) -> Response:
    require(request)
    partial = request.headers.get("hx-request") == "true"
    return _view(request, "rollouts_live.html.j2" if partial else "rollouts.html.j2")


@router.post("/rollouts/start")
async def start(request: Request) -> Response:
    u = require(request, "rollout")
    f = await form(request)
    version, group = f.get("version", "").strip(), f.get("group", "").strip()
    if not version or not group:
        return redirect("/rollouts", request, "Choose a version and a device group.")
    await run_change(
        request,
        adapters.start_rollout,
        services(request),
        version=version,
        group=group,
        actor=u.name,
        reason=f.get("reason", "").strip() or "started from the dashboard",
        allow_empty_group=f.get("allow_empty_group") == "yes",
    )
    return redirect("/rollouts", request, f"Rollout of {version} to group {group} started.")


@router.post("/rollouts/rollback")
async def rollback(request: Request) -> Response:
    u = require(request, "rollout")
    f = await form(request)
    group = f.get("group", "").strip()
    reason = f.get("reason", "").strip()
    if not group or not reason:
        return redirect("/rollouts", request, "A rollback needs a group and a reason.")
    await run_change(request, adapters.rollback, services(request), group=group, actor=u.name, reason=reason)
    return redirect("/rollouts", request, f"Group {group} is rolling back.")
