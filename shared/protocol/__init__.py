"""Wire protocol v1: topics, payload models and one validating ``decode``.

``docs/protocol.md`` is the human contract; this package is the executable one.
"""

from shared.protocol.codec import decode, encode
from shared.protocol.errors import (
    InvalidPayload,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    UnknownTopic,
    UnsupportedSchema,
)
from shared.protocol.messages import (
    SCHEMA_VERSION,
    Alert,
    CameraTelemetry,
    DeviceStatus,
    Message,
    ModelState,
    Prediction,
    PredictionBatch,
    ReleaseNotice,
    Snapshot,
    Telemetry,
    UpdateRequest,
    UpdateResponse,
)
from shared.protocol.topics import ROOT, Kind, ParsedTopic, Topics, parse_topic

__all__ = [
    "ROOT",
    "SCHEMA_VERSION",
    "Alert",
    "CameraTelemetry",
    "DeviceStatus",
    "InvalidPayload",
    "Kind",
    "MalformedPayload",
    "Message",
    "ModelState",
    "ParsedTopic",
    "PayloadTooLarge",
    "Prediction",
    "PredictionBatch",
    "ProtocolError",
    "ReleaseNotice",
    "Snapshot",
    "Telemetry",
    "Topics",
    "UnknownTopic",
    "UnsupportedSchema",
    "UpdateRequest",
    "UpdateResponse",
    "decode",
    "encode",
    "parse_topic",
]
