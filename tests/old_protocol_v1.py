"""The v1 prediction and telemetry payload models exactly as a cloud built before schema 2 had
them (a frozen copy of shared/protocol/messages.py at 77923ea, trimmed to those two messages).

Tests validate what a new box sends to a cloud that has not advertised schema 2 against these:
with ``extra="forbid"`` and ``schema: Literal[1]`` they refuse anything an old cloud would refuse."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION: Literal[1] = 1

Label = str
SEQ_MAX = 2**63 - 1  # stored as SQLite INTEGER on both sides
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


def now() -> float:
    return time.time()


class Message(BaseModel):
    # NaN and infinities are refused: a NaN timestamp cannot be stored, ordered or pruned, and a
    # receiver would otherwise drop the row with no dead letter to say so.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False, allow_inf_nan=False)

    schema_version: Literal[1] = Field(SCHEMA_VERSION, alias="schema")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


class DeviceStatus(Message):
    """Retained per device; the MQTT last-will publishes the ``offline`` form."""

    device: str
    site: str
    state: Literal["online", "offline"]
    ts: float = Field(default_factory=now)
    group: str | None = None
    software: str | None = None
    model_version: str | None = None
    reason: str | None = None  # "last-will", "shutdown", ...


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seq: int = Field(ge=1, le=SEQ_MAX, description="per-device from 1, strictly increasing, never reused")
    ts: float
    camera: str
    label: Label = Field(description="predicted label, or 'abstain' below the threshold")
    confidence: Confidence
    probs: dict[Label, Confidence] = Field(default_factory=dict)
    model_version: str
    abstain: bool = False
    flags: list[str] = Field(default_factory=list, description="frame-integrity flags")
    latency_ms: float | None = Field(None, ge=0)
    frame_ts: float | None = None
    snapshot: str | None = Field(None, description="id of a kept low-confidence snapshot")


class PredictionBatch(Message):
    device: str
    site: str
    predictions: list[Prediction] = Field(min_length=1, max_length=10_000)
    sent_ts: float = Field(default_factory=now)
    evicted_total: int = Field(0, ge=0, description="outbox rows ever evicted by the bound")

    @field_validator("predictions")
    @classmethod
    def _increasing(cls, v: list[Prediction]) -> list[Prediction]:
        for a, b in pairwise(v):
            if b.seq <= a.seq:
                raise ValueError("prediction seq numbers must be strictly increasing in a batch")
        return v


class CameraTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    state: Literal["streaming", "stalled", "reconnecting", "offline"]
    fps: float = Field(0.0, ge=0)
    frames: int = Field(0, ge=0)
    dropped: int = Field(0, ge=0)
    reconnects: int = Field(0, ge=0)
    last_frame_ts: float | None = None
    error: str | None = None
    integrity: dict[str, int] = Field(default_factory=dict)


class Telemetry(Message):
    device: str
    site: str
    ts: float = Field(default_factory=now)
    seq: int = Field(0, ge=0, le=SEQ_MAX)
    cpu_percent: float = Field(ge=0)
    cpu_per_core: list[float] = Field(default_factory=list)
    load_avg: list[float] = Field(default_factory=list)
    memory_percent: float = Field(ge=0, le=100)
    memory_used_mb: float = Field(0, ge=0)
    disk_percent: float = Field(ge=0, le=100)
    disk_free_mb: float = Field(0, ge=0)
    temperatures: dict[str, float] | None = Field(
        None, description="sensor -> °C; None when the host has no sensors"
    )
    uptime_process_s: float = Field(ge=0)
    uptime_system_s: float = Field(ge=0)
    latency_ms: dict[str, float] = Field(default_factory=dict, description="p50/p95/p99")
    inference_fps: float = Field(0.0, ge=0)
    inference_errors: int = Field(0, ge=0)
    abstain_rate: float | None = Field(None, ge=0, le=1)
    cameras: dict[str, CameraTelemetry] = Field(default_factory=dict)
    outbox_backlog: int = Field(0, ge=0)
    outbox_evicted: int = Field(0, ge=0)
    outbox_errors: int = Field(0, ge=0)
    model_version: str | None = None
    invalid_messages: dict[str, int] = Field(default_factory=dict)
