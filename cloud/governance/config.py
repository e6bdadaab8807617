from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.config import SecretRef, Section


class RuleConfig(Section):
    actions: list[Literal["notify", "rollback", "retrain"]] = Field(default_factory=lambda: ["notify"])
    severity: Literal["info", "warning", "critical"] = "warning"


class GovernanceConfig(Section):
    webhook_url: str | None = None
    webhook_secret: SecretRef | None = None
    rules: dict[str, RuleConfig] = Field(default_factory=dict)
