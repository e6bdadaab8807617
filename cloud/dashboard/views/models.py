"""Registry versions with stage, metrics, gate and evaluation report; approve or reject.

Approving goes through ``cloud.registry.approvals`` — the same functions ``parkwatch cloud
approve``/``reject`` call — so the rules (gate, staging before production, reasons, audit) are
enforced once. The dashboard only adds the signed-in user's name and role check.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from cloud.dashboard import adapters
from cloud.dashboard.web import form, redirect, render, require, run_change, services
from cloud.evaluation.gate import recheck_gate

router = APIRouter()

HEADLINE_METRICS = ("accuracy", "f1_macro", "macro_f1", "roc_auc", "ece", "recall_gap")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k] = v
    picked = {k: flat[k] for k in HEADLINE_METRICS if k in flat}
    return picked or dict(list(flat.items())[:4])


@router.get("/models")
def models_page(request: Request, stage: str = "") -> Response:
    require(request)
    reg = services(request).get_registry()
    models = reg.list_models(stage=stage or None)
    return render(request, "models.html.j2", title="Models", models=models, stage=stage, headline=headline)


@router.get("/models/{version}")
def model_page(request: Request, version: str) -> Response:
    require(request)
    svc = services(request)
    m = svc.get_registry().get_model(version)
    history = adapters.stage_history(svc, version)
    reports = adapters.report_files(svc, m)
    return render(
        request,
        "model.html.j2",
        title=f"Model {version}",
        m=m,
        history=history,
        reports=[label for label, _ in reports],
        headline=headline(m.metrics),
        # what approval checks: the stored metrics against this server's [gate], not the trainer's
        gate_now=recheck_gate(m.metrics, svc.cfg.gate),
        audit=svc.get_audit().entries(subject=f"model:{version}", newest_first=True, limit=50),
    )


@router.get("/models/{version}/report/{n}")
def model_report(request: Request, version: str, n: int) -> Response:
    require(request)
    svc = services(request)
    reports = adapters.report_files(svc, svc.get_registry().get_model(version))
    if not 0 <= n < len(reports):
        raise HTTPException(
            404, f"model {version} has no report #{n}; run `parkwatch cloud evaluate {version}`"
        )
    return FileResponse(reports[n][1], media_type="text/html")


@router.post("/models/{version}/decide")
async def decide(request: Request, version: str) -> Response:
    u = require(request, "approve")
    f = await form(request)
    decision, stage, reason = f.get("decision", ""), f.get("stage", ""), f.get("reason", "").strip()
    force = f.get("force") == "yes"
    if not reason:
        return redirect(f"/models/{version}", request, "A reason is required for every decision.")
    svc = services(request)
    if decision == "approve":
        await run_change(
            request,
            adapters.approve,
            svc,
            version=version,
            stage=stage,
            actor=u.name,
            reason=reason,
            force=force,
        )
        msg = f"Approved {version} for {stage}."
    elif decision == "reject":
        await run_change(request, adapters.reject, svc, version=version, actor=u.name, reason=reason)
        msg = f"Rejected {version}."
    else:
        return redirect(f"/models/{version}", request, "Choose approve or reject.")
    return redirect(f"/models/{version}", request, msg)
