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
            svc._owned["release_channel"] = True
        return ch


# --- approvals ------------------------------------------------------------------------------
def approve(
    svc: Services, *, version: str, stage: str, actor: str, reason: str, force: bool
) -> dict[str, Any]:
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


def report_files(svc: Services, model: Any) -> list[tuple[str, Path]]:
    """Evaluation reports of a version: the one sealed in its package, then re-evaluations
    (``parkwatch cloud evaluate``, under ``reports/<version>/<dataset>/``), newest first."""
    from shared.modelpkg import EVALUATION_HTML

    found: list[tuple[str, Path]] = []
    if model.package_dir and (Path(model.package_dir) / EVALUATION_HTML).is_file():
        found.append(("at packaging (test split)", Path(model.package_dir) / EVALUATION_HTML))
    again = sorted(
        (svc.cfg.reports_dir / model.version).glob(f"*/{EVALUATION_HTML}"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    found += [(f"re-evaluation on dataset {p.parent.name}", p) for p in again]
    return found


# --- rollouts -------------------------------------------------------------------------------
def rollout_status(svc: Services) -> list[dict[str, Any]]:
    status = release_channel(svc).status()
    out = []
    for name, g in sorted(status.get("groups", {}).items()):
        out.append(
            {
                "group": name,
                "target": g.get("target_version"),
                "total": g.get("devices", 0),
                "done": g.get("active", 0),
                "states": g.get("by_state", {}),
                "versions": g.get("by_version", {}),
                "failed": g.get("failed", []),
                "rollout": g.get("rollout"),
            }
        )
    return out


def start_rollout(
    svc: Services, *, version: str, group: str, actor: str, reason: str, allow_empty_group: bool = False
) -> dict[str, Any]:
    result: dict[str, Any] = release_channel(svc).rollout(
        version, group, actor, reason, allow_empty_group=allow_empty_group
    )
    return result


def known_groups(svc: Services) -> list[str]:
    groups: list[str] = release_channel(svc).known_groups()
    return groups


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
    out: dict[str, Any] = result if isinstance(result, dict) else dict(result)
    pred = out.get("prediction")
    if isinstance(pred, dict) and pred.get("snapshot"):
        import time

        from cloud.dashboard.snapshots import visible

        if not visible(svc.cfg, pred, time.time()):
            # The snapshot privacy gate: a snapshot the dashboard may not show is not named either.
            out["prediction"] = {**pred, "snapshot": None}
    return out
