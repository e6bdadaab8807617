"""Alert rules and actions. Rule names are those in ``cloud/governance/rules.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cloud.governance.rules import RULES
from shared.config import SecretRef, Section

Action = Literal["notify", "rollback", "retrain"]


class RuleConfig(Section):
    enabled: bool = True
    actions: list[Action] = Field(default_factory=lambda: list[Action](["notify"]))
    severity: Literal["info", "warning", "critical"] | None = Field(
        None, description="default: the rule's own"
    )


class GovernanceConfig(Section):
    webhook_url: str | None = Field(None, description="POSTed a JSON alert on open (notify action)")
    webhook_secret: SecretRef | None = Field(
        None, description="HMAC-SHA256 key: X-Parkwatch-Signature header"
    )
    webhook_timeout_s: float = Field(5.0, gt=0)
    publish_client_id: str | None = Field(
        None, description="MQTT client id for alert publishing; default parkwatch-cloud-alerts-<install id>"
    )
    rules: dict[str, RuleConfig] = Field(default_factory=dict, description="per-rule overrides")
    retrain_cooldown_s: float = Field(
        24 * 3600, ge=0, description="at most one automatic retraining per period"
    )
    retrain_command: list[str] = Field(
        default_factory=lambda: ["parkwatch", "cloud", "train"],
        description="training entry point; --dataset ID --json --config PATH are appended",
    )
    rollback_group: str | None = Field(
        None, description="group rolled back; default: the alerted devices' group"
    )

    @field_validator("rules")
    @classmethod
    def _known(cls, v: dict[str, RuleConfig]) -> dict[str, RuleConfig]:
        unknown = sorted(set(v) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(sorted(RULES))}")
        return v

    def rule(self, name: str) -> RuleConfig:
        return self.rules.get(name) or RuleConfig()
