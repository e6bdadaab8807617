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
    IR_FLAG,
    MAX_REGIONS,
    NONE_LABEL,
    PREDICTION_SCHEMAS,
    SCHEMA_VERSION,
    TELEMETRY_SCHEMAS,
    Alert,
    CameraTelemetry,
    CloudCapabilities,
    DeviceStatus,
    Message,
    ModelState,
    Prediction,
    PredictionBatch,
    PredRegion,
    ReleaseNotice,
    Snapshot,
    Telemetry,
    UpdateRequest,
    UpdateResponse,
)
from shared.protocol.topics import ROOT, Kind, ParsedTopic, Topics, parse_topic

__all__ = [
    "IR_FLAG",
    "MAX_REGIONS",
    "NONE_LABEL",
    "PREDICTION_SCHEMAS",
    "ROOT",
    "SCHEMA_VERSION",
    "TELEMETRY_SCHEMAS",
    "Alert",
    "CameraTelemetry",
    "CloudCapabilities",
    "DeviceStatus",
    "InvalidPayload",
    "Kind",
    "MalformedPayload",
    "Message",
    "ModelState",
    "ParsedTopic",
    "PayloadTooLarge",
    "PredRegion",
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
