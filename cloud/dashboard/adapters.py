"""The one place where the dashboard binds to the other domains' service layers.

Approvals, rejections, rollouts and rollbacks go through ``cloud.release.service.ReleaseChannel``
— the object the ``parkwatch cloud approve/reject/rollout/rollback`` commands use — which applies
``cloud.registry.approvals`` (gate, staging-before-production, reasons), signs the decision into
the TUF repository and writes the audit log. Nothing here re-implements a rule. When a domain's
module is not installed yet the call raises ``ServiceUnavailable`` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.dashboard.deps import Services
from cloud.dashboard.errors import ServiceUnavailable

LINEAGE = "cloud.lineage"


def release_channel(svc: Services) -> Any:
    """The shared ReleaseChannel (tests may pass one in ``extras['release_channel']``)."""
    with svc._lock:
        ch = svc.extras.get("release_channel")
        if ch is None:
            mod = svc.module("cloud.release.service", "the release channel")
            ch = mod.ReleaseChannel(svc.cfg, registry=svc.get_registry(), audit=svc.get_audit())
            svc.extras["release_channel"] = ch
        return ch


# --- approvals ------------------------------------------------------------------------------
def approve(svc: Services, *, version: str, stage: str, actor: str, reason: str, force: bool) -> dict[str, Any]:
    result: dict[str, Any] = release_channel(svc).approve(version, stage, actor, reason, force)
    return result


def reject(svc: Services, *, version: str, actor: str, reason: str) -> dict[str, Any]:
    result: dict[str, Any] = release_channel(svc).reject(version, actor, reason)
    return result


def stage_history(svc: Services, version: str) -> tuple[list[dict[str, Any]], str | None]:
    try:
        mod = svc.module("cloud.registry.approvals", "stage history")
    except ServiceUnavailable as e:
        return [], str(e)
    return [d.to_dict() for d in mod.history(svc.get_registry(), version)], None


def report_file(svc: Services, model: Any) -> Path | None:
    """The evaluation report HTML of a version, wherever the pipeline wrote it."""
    candidates: list[Path] = []
    for src in (model.metrics or {}, model.lineage or {}):
        for key in ("report_html", "report"):
            v = src.get(key)
            if isinstance(v, str) and v.endswith(".html"):
                candidates.append(Path(v))
    if model.package_dir:
        pkg = Path(model.package_dir)
        candidates += [pkg / "report.html", pkg / "evaluation.html", pkg / "evaluation" / "report.html"]
    candidates += [svc.cfg.reports_dir / f"{model.version}.html", svc.cfg.reports_dir / model.version / "report.html"]
    for c in candidates:
        if c.is_file():
            return c
    return None


# --- rollouts -------------------------------------------------------------------------------
def rollout_status(svc: Services) -> list[dict[str, Any]]:
    status = release_channel(svc).status()
    out = []
    for name, g in sorted(status.get("groups", {}).items()):
        out.append({"group": name, "target": g.get("target_version"), "total": g.get("devices", 0),
                    "done": g.get("active", 0), "states": g.get("by_state", {}),
                    "versions": g.get("by_version", {}), "failed": g.get("failed", []),
                    "rollout": g.get("rollout")})
    return out


def start_rollout(svc: Services, *, version: str, group: str, actor: str, reason: str) -> dict[str, Any]:
    result: dict[str, Any] = release_channel(svc).rollout(version, group, actor, reason)
    return result


def rollback(svc: Services, *, group: str, actor: str, reason: str) -> dict[str, Any]:
    result: dict[str, Any] = release_channel(svc).rollback(group, actor, reason)
    return result


# --- lineage --------------------------------------------------------------------------------
def lineage_of(svc: Services, ref: str) -> dict[str, Any]:
    mod = svc.module(LINEAGE, "lineage")
    fn = getattr(mod, "lineage", None)
    if fn is None:
        raise ServiceUnavailable(f"lineage is not available: {LINEAGE}.lineage does not exist yet")
    result = fn(svc.cfg, ref)
    return result if isinstance(result, dict) else dict(result)
