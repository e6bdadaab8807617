"""What the fleet store returns (cloud/fleet/store.py, on SQLite and on PostgreSQL alike).

Field order is the SQLite table's column order, so ``to_dict()`` reads like the row it was. A
backend's own bookkeeping columns (PostgreSQL's partition ``day``) are not part of a record: both
backends return the same records for the same rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.records import Record


@dataclasses.dataclass(frozen=True, slots=True)
class Device(Record):
    """One row of ``devices``: what ingest last learnt about a box, and its last health check."""

    device: str
    site: str
    grp: str | None
    status: str | None
    status_ts: float | None
    status_reason: str | None
    status_rx: float | None
    software: str | None
    model_version: str | None
    first_seen: float | None
    last_seen: float | None
    last_msg_ts: float | None
    max_seq: int | None
    evicted_total: int
    predictions_total: int
    update_state: str | None
    update_version: str | None
    active_version: str | None
    previous_version: str | None
    update_reason: str | None
    update_progress: float | None
    update_ts: float | None
    health: str | None
    health_reasons: list[str] | None
    health_ts: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceBrief(Record):
    """The columns of ``devices`` the fleet page counts, filters and sorts every device by; the
    page reads whole :class:`Device` rows for the devices it shows only (10,000 whole rows were
    most of its time)."""

    device: str
    site: str
    status: str | None
    status_reason: str | None
    last_seen: float | None
    health: str | None
    update_state: str | None
    model_version: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class StatusEvent(Record):
    device: str
    ts: float
    state: str
    reason: str | None
    received_ts: float


@dataclasses.dataclass(frozen=True, slots=True)
class ModelState(Record):
    device: str
    ts: float
    state: str
    version: str | None
    active_version: str | None
    reason: str | None
    received_ts: float


@dataclasses.dataclass(frozen=True, slots=True)
class TelemetryPoint(Record):
    """The figures of one telemetry message that the pages chart."""

    device: str
    ts: float
    site: str
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None
    temp_max: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    inference_fps: float | None
    inference_errors: int | None
    abstain_rate: float | None
    outbox_backlog: int | None
    outbox_evicted: int | None
    model_version: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class LiveFigures(Record):
    """The newest telemetry figures of a device that the fleet page sorts by."""

    device: str
    cpu_percent: float | None
    temp_max: float | None
    outbox_backlog: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class TrendPoint(Record):
    """One sample of the fleet page's CPU and temperature sparklines."""

    device: str
    ts: float
    cpu_percent: float | None
    temp_max: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class TelemetryRow(TelemetryPoint):
    """A whole telemetry row: the figures, and the message as the box sent it (``body``)."""

    seq: int | None
    body: dict[str, Any]
    received_ts: float


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction(Record):
    """One stored prediction; ``id`` (``device:seq``) is what labels and lineage name it by."""

    device: str
    seq: int
    site: str
    camera: str
    ts: float
    label: str
    confidence: float
    probs: dict[str, float] | None
    model_version: str
    abstain: int
    flags: list[str] | None
    latency_ms: float | None
    frame_ts: float | None
    snapshot: str | None
    received_ts: float
    regions: list[dict[str, Any]] | None
    ir: int | None
    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Outcomes(Record):
    """What the cameras saw in a window (:func:`cloud.fleet.outcomes.summarize`): ``pets`` never
    counts a ``none`` frame; ``from_`` (JSON ``from``) is where the window really starts."""

    total: int
    pets: dict[str, int]
    pet_total: int
    none: int
    abstain: int
    ir: int
    day: int
    lighting_unknown: int
    ir_share: float | None
    from_: float = dataclasses.field(metadata={"json": "from"})


@dataclasses.dataclass(frozen=True, slots=True)
class Gap(Record):
    id: int
    device: str
    site: str
    first_seq: int
    last_seq: int
    cause: str
    detected_ts: float
    missing: int


@dataclasses.dataclass(frozen=True, slots=True)
class Feedback(Record):
    """A person's label for one prediction (``label``) beside the model's (``predicted``)."""

    device: str
    seq: int
    site: str
    snapshot: str | None
    label: str
    predicted: str
    model_version: str
    pred_ts: float
    actor: str
    comment: str | None
    ts: float


@dataclasses.dataclass(frozen=True, slots=True)
class Labelled(Feedback):
    """The answer to a new label: the stored feedback and the prediction's id."""

    prediction_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class DriftResult(Record):
    """Drift figures of one cohort (model, site, device; ``device`` '' for a whole site) in one
    analysis run."""

    id: int
    run_id: str
    ts: float
    window_start: float
    window_end: float
    model_version: str
    site: str
    device: str
    n: int
    psi: float | None
    js: float | None
    ks: float | None
    ks_p: float | None
    wasserstein: float | None
    abstain_rate: float | None
    flag_rate: float | None
    est_accuracy: float | None
    accuracy: float | None
    n_labels: int | None
    recall_gap: float | None
    drifted: int
    reasons: list[str]
    details: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    """A refused message; ``payload`` as text (cut), ``bytes`` its whole size."""

    id: int
    worker: str
    topic: str
    kind: str
    reason: str
    received_ts: float
    bytes: int
    payload: str
