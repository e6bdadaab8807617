"""Labelling: the low-confidence snapshots boxes kept, labelled cat / dog / none (no cat or dog;
``neither``, its older name, is still accepted and stored as ``none``).

Privacy (GDPR; CCTV frames can show people): a snapshot is shown only if its site is listed in
``[dashboard] snapshot_sites`` — the cloud half of a double opt-in whose box half is the edge's
``[snapshots] upload_allowed`` — and only for ``snapshot_keep_days``. Labels go into the fleet
feedback table through ``cloud.fleet.feedback.label_prediction``, the same function as
``parkwatch cloud label`` and ``POST /api/feedback``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from cloud.dashboard.deps import Services
from cloud.dashboard.regions import decorate, fits, jpeg_size, overlay
from cloud.dashboard.snapshots import visible
from cloud.dashboard.web import form, redirect, render, require, run_change, services
from cloud.fleet.outcomes import FEEDBACK_LABELS
from cloud.fleet.records import Prediction

router = APIRouter()
LABELS = FEEDBACK_LABELS
SCAN_LIMIT = 2000


def unlabelled(svc: Services, limit: int) -> list[dict[str, Any]]:
    sites = svc.cfg.dashboard.snapshot_sites
    if not sites:
        return []
    since = time.time() - svc.cfg.dashboard.snapshot_keep_days * 86400
    marks = ",".join("?" for _ in sites)
    return list(
        svc.get_fleet().query(
            "SELECT p.device, p.seq, p.site, p.camera, p.ts, p.label, p.confidence, p.model_version, "
            "p.snapshot, p.abstain, p.regions, p.ir "
            "FROM predictions p LEFT JOIN feedback f ON f.device = p.device AND f.seq = p.seq "
            f"WHERE p.snapshot IS NOT NULL AND f.device IS NULL AND p.ts >= ? AND p.site IN ({marks}) "
            "ORDER BY p.ts DESC LIMIT ?",
            [since, *sites, limit],
        )
    )


@router.get("/labelling")
def labelling_page(request: Request) -> Response:
    require(request)
    svc = services(request)
    # Only frames whose image reached the cloud can be judged; the rest are counted.
    folder = svc.cfg.paths.snapshots_dir
    candidates = unlabelled(svc, SCAN_LIMIT)
    found = [it for it in candidates if (folder / f"{it['snapshot']}.jpg").is_file()]
    waiting = len(candidates) - len(found)
    items = [decorate(it) for it in found[: svc.cfg.dashboard.page_size]]
    for it in items:
        # The regions that held a pet, drawn over the frame (boxes are in its pixels).
        size = jpeg_size(folder / f"{it['snapshot']}.jpg")
        it["overlay"] = overlay(it.get("regions"), size)
        it["scaled"] = bool(it.get("regions") and size and not fits(it["regions"], size))
    return render(
        request,
        "labelling.html.j2",
        title="Labelling",
        items=items,
        waiting=waiting,
        labels=LABELS,
        sites=svc.cfg.dashboard.snapshot_sites,
        keep_days=svc.cfg.dashboard.snapshot_keep_days,
    )


def _pred_for(svc: Services, snapshot: str) -> Prediction:
    pred = svc.get_fleet().prediction_by_snapshot(snapshot)
    if not visible(svc.cfg, pred, time.time()):
        # Same answer as "absent": whether a hidden snapshot exists is itself not shown.
        raise HTTPException(404, f"snapshot {snapshot} is not available for labelling")
    return pred


@router.get("/labelling/{snapshot}.jpg")
def snapshot_image(request: Request, snapshot: str) -> Response:
    require(request)
    svc = services(request)
    _pred_for(svc, snapshot)
    path = svc.cfg.paths.snapshots_dir / f"{Path(snapshot).name}.jpg"
    if not path.is_file():
        raise HTTPException(404, f"the image of snapshot {snapshot} has not arrived or was purged")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@router.post("/labelling/{snapshot}")
async def label(request: Request, snapshot: str) -> Response:
    u = require(request, "label")
    f = await form(request)
    value = f.get("label", "")
    svc = services(request)
    pred = _pred_for(svc, snapshot)
    from cloud.fleet.feedback import label_prediction

    row = await run_change(
        request,
        label_prediction,
        svc.get_fleet(),
        value,
        u.name,
        snapshot=pred.snapshot,
        comment=f.get("comment") or None,
        audit=svc.get_audit(),
    )
    return redirect("/labelling", request, f"Labelled {row.prediction_id} as {value}.")
