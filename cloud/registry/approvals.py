"""Approvals: who moved which model version to which stage, why, and whether the rules allowed it.

The CLI and the dashboard both call these functions, so the rules live in one place:

* a named actor and a non-empty reason for every decision;
* a version that failed the promotion gate is refused (the registry's own rule), and when the
  caller passes the serving config's ``gate``, the stored metrics are checked against it again:
  the verdict stored at training time used the trainer's ``[gate]``, which may have been looser;
* ``production`` needs a successful ``staging`` rollout of the same version first
  (the seed's application-testing step) unless ``force=True`` - and a forced approval must say
  why, which the audit log keeps;
* every decision lands in ``stage_history`` and in the hash-chained audit log.

Signing the decision into the TUF repository (the approver key) is done by the caller-supplied
``signer`` before anything is recorded, so a missing approver key, or one the repository's root
does not trust, records nothing. What the signer returns (the key ids it signed with) goes into
the audit entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cloud.evaluation.config import GateConfig
from cloud.evaluation.gate import recheck_gate
from cloud.registry.audit import AuditLog
from cloud.registry.errors import RegistryError, StageError
from cloud.registry.models import check_stage_change
from cloud.registry.store import Registry
from cloud.registry.tx import transaction
from shared.records import Record

APPROVABLE = ("staging", "production")
HISTORY = "stage_history"
ROLLOUTS = "rollouts"
ROLLOUT_STATUSES = ("in_progress", "succeeded", "failed", "rolled_back", "superseded")

# signer(version, stages) -> audit details (e.g. the key ids it signed with) or None: puts the
# approver-signed entry into the release channel.
ApprovalSigner = Callable[[str, list[str]], dict[str, Any] | None]


class ApprovalError(RegistryError):
    """An approval or rejection breaks a rule; the message names the rule and the way forward."""


@dataclass(frozen=True, slots=True)
class Decision(Record):
    id: int
    version: str
    decision: str  # approve | reject
    from_stage: str
    to_stage: str
    actor: str
    reason: str
    forced: bool
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _thresholds(t: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in t.items())


def _check_words(actor: str, reason: str) -> None:
    if not actor or not actor.strip():
        raise ApprovalError("name who decides (--as NAME)")
    if not reason or not reason.strip():
        raise ApprovalError("give a reason (--reason TEXT); it is kept in the audit log")


def staging_succeeded(registry: Registry, version: str) -> bool:
    """True once a rollout of ``version`` to a staging group reached every device, unrolled back."""
    row = registry.db.execute(
        f"SELECT 1 FROM {ROLLOUTS} WHERE version = ? AND stage = 'staging' AND status = 'succeeded' LIMIT 1",
        [version],
    ).fetchone()
    return row is not None


def _record(
    registry: Registry,
    audit: AuditLog,
    version: str,
    decision: str,
    from_stage: str,
    to_stage: str,
    actor: str,
    reason: str,
    forced: bool,
    extra: dict[str, Any],
) -> Decision:
    ts = time.time()
    with transaction(registry.db) as conn:
        cur = conn.execute(
            f"INSERT INTO {HISTORY} (version, decision, from_stage, to_stage, actor, reason, forced, ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (version, decision, from_stage, to_stage, actor, reason, int(forced), ts),
        )
        row_id = int(cur.lastrowid or 0)
    audit.append(
        actor,
        decision,
        f"model:{version}",
        {"from": from_stage, "to": to_stage, "reason": reason, "forced": forced, **extra},
    )
    return Decision(row_id, version, decision, from_stage, to_stage, actor, reason, forced, ts)


def approve(
    registry: Registry,
    audit: AuditLog,
    version: str,
    stage: str,
    actor: str,
    reason: str,
    force: bool = False,
    *,
    signer: ApprovalSigner | None = None,
    require_staging: bool = True,
    gate: GateConfig | None = None,
) -> Decision:
    """Approve ``version`` for ``stage``; raises :class:`ApprovalError`/:class:`StageError` if not allowed."""
    _check_words(actor, reason)
    if stage not in APPROVABLE:
        raise ApprovalError(f"approve for one of {', '.join(APPROVABLE)}, not {stage!r}")
    model = registry.get_model(version)
    check_stage_change(model, stage)  # refuses a model that failed the promotion gate
    if model.stage == "rejected":
        raise ApprovalError(f"model {version} was rejected; approve a new version instead")
    if stage == "staging" and model.stage == "production":
        raise ApprovalError(f"model {version} is already approved for production (which includes staging)")
    gate_note: dict[str, Any] = {}
    if gate is not None:
        verdict = recheck_gate(model.metrics, gate)
        if not verdict["passed"]:
            raise ApprovalError(
                f"model {version} does not pass the promotion gate of the serving config "
                f"({'; '.join(verdict['failures'])}; thresholds {_thresholds(verdict['thresholds'])}); "
                "the gate stored at training time is not what decides. Train a better model, or "
                "evaluate it again with 'parkwatch cloud evaluate VERSION'"
            )
        gate_note = {"gate_at_approval": verdict["thresholds"]}
    forced = False
    if stage == "production" and require_staging and not staging_succeeded(registry, version):
        if not force:
            raise ApprovalError(
                f"model {version} has no successful staging rollout yet: run "
                f"'parkwatch cloud rollout {version} --group staging' and wait for all staging devices "
                "to report active, or pass --force with a reason that explains why not"
            )
        forced = True
    stages = ["staging", "production"] if stage == "production" else ["staging"]
    signed = signer(version, stages) if signer is not None else None
    registry.set_stage(version, stage)
    return _record(
        registry,
        audit,
        version,
        "approve",
        model.stage,
        stage,
        actor,
        reason,
        forced,
        {"signed_stages": stages, "signed": signer is not None, **gate_note, **(signed or {})},
    )


def reject(
    registry: Registry,
    audit: AuditLog,
    version: str,
    actor: str,
    reason: str,
    *,
    signer: ApprovalSigner | None = None,
    deployed_groups: list[str] | None = None,
) -> Decision:
    """Reject ``version``: it leaves every stage and its approver signature is withdrawn."""
    _check_words(actor, reason)
    model = registry.get_model(version)
    if deployed_groups:
        raise ApprovalError(
            f"model {version} is what group(s) {', '.join(deployed_groups)} run now; first move them to "
            "another approved version ('parkwatch cloud rollback --group G --reason ...', or, for a "
            "group's first version, 'parkwatch cloud rollout OTHER --group G') so devices are never "
            "left without an approved model"
        )
    signed = signer(version, []) if signer is not None else None
    registry.set_stage(version, "rejected")
    return _record(
        registry,
        audit,
        version,
        "reject",
        model.stage,
        "rejected",
        actor,
        reason,
        False,
        {"signed": signer is not None, **(signed or {})},
    )


def history(registry: Registry, version: str | None = None) -> list[Decision]:
    where, args = ("version = ?", [version]) if version else (None, [])
    return [
        Decision(
            r["id"],
            r["version"],
            r["decision"],
            r["from_stage"],
            r["to_stage"],
            r["actor"],
            r["reason"],
            bool(r["forced"]),
            r["ts"],
        )
        for r in registry.db.table(HISTORY).rows_where(where, args, order_by="id")
    ]


def approved_stages(registry: Registry, version: str) -> list[str]:
    """Stages a version is approved for now, from the registry stage."""
    stage = registry.get_model(version).stage
    return {"staging": ["staging"], "production": ["staging", "production"]}.get(stage, [])


__all__ = [
    "APPROVABLE",
    "ApprovalError",
    "ApprovalSigner",
    "Decision",
    "StageError",
    "approve",
    "approved_stages",
    "history",
    "reject",
    "staging_succeeded",
]
