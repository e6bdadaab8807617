"""Pydantic models for every v1 payload.

Every payload carries ``schema`` (the protocol version) so a receiver can refuse what it does
not understand instead of misreading it. Models ignore no field silently: unknown keys are an
error (``extra="forbid"``), because a sender that adds a field must bump the schema.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1
# Prediction batches exist in two versions: schema 2 adds per-prediction ``regions`` and ``ir``.
# A box sends schema 2 only to a cloud that advertised it (``CloudCapabilities``), because an
# old cloud refuses unknown fields; everything else stays schema 1.
PREDICTION_SCHEMAS: tuple[int, ...] = (1, 2)
# Telemetry schema 2 adds ``none_rate``; negotiated the same way.
TELEMETRY_SCHEMAS: tuple[int, ...] = (1, 2)
IR_FLAG = "ir"  # how a schema-1 batch carries a prediction's ``ir`` (in ``flags``)
NONE_LABEL = "none"  # sure there is no pet; distinct from ``abstain`` (unsure)
MAX_REGIONS = 32
MAX_COORD = 16384  # frame pixels: no camera this box reads is wider or taller
SNAPSHOT_B64_MAX = 1_500_000  # characters of base64: a JPEG of at most 1,125,000 bytes

Label = str
SEQ_MAX = 2**63 - 1  # stored as SQLite INTEGER on both sides
# Every count a device sends. Why the upper bound: the stores keep counts as 64-bit integers,
# and an unbounded one (2**64 in a telemetry backlog) passed validation, then failed the insert
# and ended as a dead letter the refusal counts did not know of. No real counter gets near it.
Count = Annotated[int, Field(ge=0, le=SEQ_MAX)]
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


Coord = Annotated[int, Field(ge=0, le=MAX_COORD)]


class PredRegion(BaseModel):
    """One region of a frame that held a pet: ``box`` is ``[x, y, w, h]`` in frame pixels."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    box: list[Coord] = Field(min_length=4, max_length=4)
    label: Label = Field(min_length=1, max_length=64)
    confidence: Confidence

    @field_validator("box")
    @classmethod
    def _box(cls, v: list[int]) -> list[int]:
        x, y, w, h = v
        if w < 1 or h < 1:
            raise ValueError("box width and height must be at least 1 pixel")
        if x + w > MAX_COORD or y + h > MAX_COORD:
            raise ValueError(f"box must lie within {MAX_COORD}x{MAX_COORD} pixels")
        return v


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seq: int = Field(ge=1, le=SEQ_MAX, description="per-device from 1, strictly increasing, never reused")
    ts: float
    camera: str
    label: Label = Field(
        description="a pet label, 'none' (sure there is no pet) or 'abstain' (below the threshold)"
    )
    confidence: Confidence
    probs: dict[Label, Confidence] = Field(default_factory=dict)
    model_version: str
    abstain: bool = False
    flags: list[str] = Field(default_factory=list, description="frame-integrity flags")
    latency_ms: float | None = Field(None, ge=0)
    frame_ts: float | None = None
    snapshot: str | None = Field(None, description="id of a kept low-confidence snapshot")
    # schema 2 only (a schema-1 batch must not carry them: see PredictionBatch)
    regions: list[PredRegion] = Field(
        default_factory=list, max_length=MAX_REGIONS, description="the regions that held a pet"
    )
    ir: bool | None = Field(None, description="greyscale (IR/night) frame; None: not measured")

    def as_schema1(self) -> Prediction:
        """What an old cloud accepts: regions dropped, ``ir`` folded into ``flags``."""
        if not self.regions and self.ir is None:
            return self
        flags = list(self.flags)
        if self.ir and IR_FLAG not in flags:
            flags.append(IR_FLAG)
        return self.model_copy(update={"regions": [], "ir": None, "flags": flags})


class PredictionBatch(Message):
    schema_version: Literal[1, 2] = Field(SCHEMA_VERSION, alias="schema")  # type: ignore[assignment]
    device: str
    site: str
    predictions: list[Prediction] = Field(min_length=1, max_length=10_000)
    sent_ts: float = Field(default_factory=now)
    evicted_total: Count = Field(0, description="outbox rows ever evicted by the bound")

    @field_validator("predictions")
    @classmethod
    def _increasing(cls, v: list[Prediction]) -> list[Prediction]:
        for a, b in pairwise(v):
            if b.seq <= a.seq:
                raise ValueError("prediction seq numbers must be strictly increasing in a batch")
        return v

    @model_validator(mode="after")
    def _fields_of_schema(self) -> PredictionBatch:
        if self.schema_version == 1 and any(p.regions or p.ir is not None for p in self.predictions):
            raise ValueError("regions and ir need a schema 2 batch")
        return self

    def to_wire(self) -> dict[str, Any]:
        # Schema 1 on the wire is exactly what an old cloud knows: no regions/ir keys at all.
        if self.schema_version == 1:
            return self.model_dump(
                mode="json",
                by_alias=True,
                exclude_none=False,
                exclude={"predictions": {"__all__": {"regions", "ir"}}},
            )
        return super().to_wire()

    @classmethod
    def for_cloud(
        cls,
        device: str,
        site: str,
        predictions: list[Prediction],
        accepted: Collection[int],
        evicted_total: int = 0,
    ) -> PredictionBatch:
        """The newest batch schema the cloud said it accepts (``CloudCapabilities.predictions``);
        schema 1 (regions dropped, ``ir`` as a flag) when it said nothing."""
        if 2 in accepted:
            return cls(
                schema_version=2,
                device=device,
                site=site,
                predictions=predictions,
                evicted_total=evicted_total,
            )
        return cls(
            schema_version=1,
            device=device,
            site=site,
            predictions=[p.as_schema1() for p in predictions],
            evicted_total=evicted_total,
        )


class CameraTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    state: Literal["streaming", "stalled", "reconnecting", "offline"]
    fps: float = Field(0.0, ge=0)
    frames: Count = 0
    dropped: Count = 0
    reconnects: Count = 0
    last_frame_ts: float | None = None
    error: str | None = None
    integrity: dict[str, Count] = Field(default_factory=dict)
    # Added after schema 1 shipped: optional, and left out of the wire form while empty (see
    # Telemetry.to_wire), so an older cloud keeps accepting a box with nothing to report here.
    refused: dict[str, Count] = Field(default_factory=dict, description="frames refused undecoded, by kind")


class Telemetry(Message):
    schema_version: Literal[1, 2] = Field(SCHEMA_VERSION, alias="schema")  # type: ignore[assignment]
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
    inference_errors: Count = 0
    abstain_rate: float | None = Field(None, ge=0, le=1)
    none_rate: float | None = Field(
        None, ge=0, le=1, description="schema 2: share of classified frames that were 'none'"
    )
    cameras: dict[str, CameraTelemetry] = Field(default_factory=dict)
    outbox_backlog: Count = 0
    outbox_evicted: Count = 0
    outbox_errors: Count = 0
    model_version: str | None = None
    invalid_messages: dict[str, Count] = Field(default_factory=dict)
    lost_predictions: Count = Field(
        0, description="predictions lost before the outbox (disk full, write errors); added later"
    )

    @model_validator(mode="after")
    def _fields_of_schema(self) -> Telemetry:
        if self.schema_version == 1 and self.none_rate is not None:
            raise ValueError("none_rate needs schema 2 telemetry")
        return self

    def to_wire(self) -> dict[str, Any]:
        """Schema 1 on the wire is exactly what an old cloud knows (it refuses unknown keys): the
        fields added since (``none_rate``, ``lost_predictions``, a camera's ``refused``) travel
        only in schema 2, which a box sends only to a cloud that advertised it."""
        if self.schema_version != 1:
            return self.model_dump(mode="json", by_alias=True, exclude_none=False)
        wire = self.model_dump(
            mode="json", by_alias=True, exclude_none=False, exclude={"none_rate", "lost_predictions"}
        )
        for cam in (wire.get("cameras") or {}).values():
            cam.pop("refused", None)
        return wire


ModelStateName = Literal["downloading", "verifying", "self-testing", "active", "failed", "idle"]


class ModelState(Message):
    """Retained per device: where its model update stands."""

    device: str
    site: str
    group: str | None = None
    state: ModelStateName
    version: str | None = Field(None, description="the version this state is about")
    active_version: str | None = Field(None, description="the version classifying frames now")
    previous_version: str | None = None
    reason: str | None = None
    progress: float | None = Field(None, ge=0, le=1)
    ts: float = Field(default_factory=now)


class Snapshot(Message):
    """A low-confidence frame sent for labelling; only from boxes whose config allows it (GDPR)."""

    device: str
    site: str
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    camera: str
    ts: float
    jpeg: str = Field(min_length=4, max_length=SNAPSHOT_B64_MAX, description="base64 of the JPEG file")


class CloudCapabilities(Message):
    """Retained on ``parkwatch/v1/cloud/capabilities`` by the cloud's fleet ingest: which message
    versions the cloud accepts. A box that has not seen it assumes an old cloud (schema 1 only)."""

    predictions: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=16
    )
    telemetry: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=16
    )
    ts: float = Field(default_factory=now)


class ReleaseNotice(Message):
    """Retained per group: 'new TUF metadata exists, refresh'. Carries no authority itself."""

    group: str
    version: str | None = None
    timestamp_version: Count | None = None
    ts: float = Field(default_factory=now)


class Alert(Message):
    id: str
    site: str
    device: str | None = None
    rule: str
    severity: Literal["info", "warning", "critical"]
    state: Literal["open", "acknowledged", "resolved"]
    message: str
    ts: float = Field(default_factory=now)
    details: dict[str, Any] = Field(default_factory=dict)


class UpdateRequest(Message):
    """Edge → cloud: 'send me this TUF path from this offset'. Reply goes to the MQTT 5
    response topic with the same correlation data."""

    path: str = Field(min_length=1, max_length=512)
    offset: Count = 0
    length: int = Field(256 * 1024, ge=1, le=1024 * 1024)


class UpdateResponse(Message):
    path: str
    status: Literal["ok", "not_found", "error"]
    offset: Count = 0
    total: Count | None = None
    data: str = Field("", description="base64 of the chunk")
    error: str | None = None
