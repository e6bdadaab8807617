"""The alert rules: what the health check and the analysis can conclude, and how loud it is.

A :class:`Finding` is a conclusion about one subject (a device, a site's model); the governor
turns findings into alerts. Its ``key`` identifies "the same problem" so a condition that
persists updates one alert instead of opening a new one every check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
Scope = Literal["health", "drift"]


@dataclass(frozen=True)
class Rule:
    name: str
    scope: Scope
    severity: Severity
    summary: str
    # Judged from the device's newest telemetry: while there is none fresh (offline, stale), a
    # health check can neither raise nor clear it (cloud.analysis.health.judged).
    from_telemetry: bool = False


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "device_offline",
            "health",
            "warning",
            "the device said offline or has been silent past the heartbeat",
        ),
        Rule(
            "overheating",
            "health",
            "critical",
            "a temperature sensor is above the limit",
            from_telemetry=True,
        ),
        Rule(
            "cpu_saturation",
            "health",
            "warning",
            "CPU above the limit for several samples",
            from_telemetry=True,
        ),
        Rule("memory_high", "health", "warning", "memory use above the limit", from_telemetry=True),
        Rule("disk_high", "health", "warning", "disk use above the limit", from_telemetry=True),
        Rule(
            "camera_down",
            "health",
            "warning",
            "a camera is offline, reconnecting or stalled",
            from_telemetry=True,
        ),
        Rule(
            "frame_integrity",
            "health",
            "warning",
            "a camera's frames are flagged frozen, covered, blank or blurred",
            from_telemetry=True,
        ),
        Rule(
            "telemetry_anomaly",
            "health",
            "info",
            "a telemetry figure is far from its own recent history",
            from_telemetry=True,
        ),
        Rule(
            "predictions_lost",
            "health",
            "warning",
            "the device lost predictions before its outbox (disk full, write errors)",
            from_telemetry=True,
        ),
        Rule("ingest_gap", "health", "warning", "predictions from this device are missing (sequence gap)"),
        Rule(
            "update_failed",
            "health",
            "warning",
            "the device refused or failed its model update (it keeps running its current model)",
        ),
        Rule(
            "ingest_backlog",
            "health",
            "warning",
            "acknowledged messages wait in an ingest inbox: the materializer is down or behind",
        ),
        Rule(
            "class_mix_drift",
            "drift",
            "warning",
            "the predicted cat/dog mix moved away from the test-set baseline",
        ),
        Rule(
            "confidence_drift", "drift", "warning", "the confidence distribution moved away from the baseline"
        ),
        Rule("abstain_rate", "drift", "warning", "the model abstains much more often than on the test set"),
        Rule("integrity_rate", "drift", "warning", "many frames carry integrity flags"),
        Rule("estimated_accuracy_drop", "drift", "warning", "accuracy estimated from confidence (CBPE) fell"),
        Rule("accuracy_drop", "drift", "critical", "accuracy on operator labels fell below the baseline"),
        Rule("recall_gap", "drift", "warning", "the model finds one class much more readily than the other"),
    )
}


@dataclass(frozen=True)
class Finding:
    rule: str
    site: str
    message: str
    device: str | None = None
    subject: str = ""
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown alert rule {self.rule!r}; known: {', '.join(sorted(RULES))}")

    @property
    def key(self) -> str:
        return f"{self.rule}|{self.site}|{self.device or ''}|{self.subject}"
