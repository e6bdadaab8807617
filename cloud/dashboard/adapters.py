"""The one place where the dashboard binds to the other domains' service layers.

Approvals, rejections, rollouts and rollbacks go through ``cloud.release.channel.ReleaseChannel``
— the object the ``parkwatch cloud approve/reject/rollout/rollback`` commands use — which applies
``cloud.registry.approvals`` (gate, staging-before-production, reasons), signs the decision into
the TUF repository and writes the audit log. Nothing here re-implements a rule.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cloud import lineage
from cloud.dashboard.deps import Services
from cloud.dashboard.snapshots import visible
from cloud.registry import approvals
from cloud.registry.models import ModelRecord
from cloud.release.channel import ReleaseChannel
from cloud.release.records import RolledBack, RolloutStarted, Signed


def release_channel(svc: Services) -> ReleaseChannel:
    """The dashboard's one ReleaseChannel (tests may pass one to ``create_app``)."""
    return svc.get_release_channel()


# --- approvals ------------------------------------------------------------------------------
def approve(svc: Services, *, version: str, stage: str, actor: str, reason: str, force: bool) -> Signed:
    return release_channel(svc).approve(version, stage, actor, reason, force)


def reject(svc: Services, *, version: str, actor: str, reason: str) -> Signed:
    return release_channel(svc).reject(version, actor, reason)


def stage_history(svc: Services, version: str) -> list[dict[str, Any]]:
    return [d.to_dict() for d in approvals.history(svc.get_registry(), version)]


def report_files(svc: Services, model: ModelRecord) -> list[tuple[str, Path]]:
    """Evaluation reports of a version: the one sealed in its package, then re-evaluations
    (``parkwatch cloud evaluate``, under ``reports/<version>/<dataset>/``), newest first."""
    from shared.modelpkg import EVALUATION_HTML

    found: list[tuple[str, Path]] = []
    if model.package_dir and (Path(model.package_dir) / EVALUATION_HTML).is_file():
        found.append(("at packaging (test split)", Path(model.package_dir) / EVALUATION_HTML))
    again = sorted(
        (svc.cfg.paths.reports_dir / model.version).glob(f"*/{EVALUATION_HTML}"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    found += [(f"re-evaluation on dataset {p.parent.name}", p) for p in again]
    return found


# --- rollouts -------------------------------------------------------------------------------
def rollout_status(svc: Services) -> list[dict[str, Any]]:
    status = release_channel(svc).status()
    out = []
    for name, g in sorted(status.groups.items()):
        out.append(
            {
                "group": name,
                "target": g.target_version,
                "total": g.devices,
                "done": g.active,
                "states": g.by_state,
                "versions": g.by_version,
                "failed": g.failed,
                "rollout": g.rollout,
            }
        )
    return out


def start_rollout(
    svc: Services, *, version: str, group: str, actor: str, reason: str, allow_empty_group: bool = False
) -> RolloutStarted:
    return release_channel(svc).rollout(version, group, actor, reason, allow_empty_group=allow_empty_group)


def known_groups(svc: Services) -> list[str]:
    return release_channel(svc).known_groups()


def rollback(svc: Services, *, group: str, actor: str, reason: str) -> RolledBack:
    return release_channel(svc).rollback(group, actor, reason)


# --- lineage --------------------------------------------------------------------------------
def lineage_of(svc: Services, ref: str) -> dict[str, Any]:
    out = lineage.lineage(svc.cfg, ref)
    pred = out.get("prediction")
    if isinstance(pred, dict) and pred.get("snapshot") and not visible(svc.cfg, pred, time.time()):
        # The snapshot privacy gate: a snapshot the dashboard may not show is not named either.
        out["prediction"] = {**pred, "snapshot": None}
    return out
