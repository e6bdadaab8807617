"""Typed protocol errors. Receivers count them by ``kind`` and drop the message; never crash."""

from shared.errors import ParkwatchError


class ProtocolError(ParkwatchError):
    kind = "protocol"


class UnknownTopic(ProtocolError):
    kind = "unknown_topic"


class PayloadTooLarge(ProtocolError):
    kind = "too_large"


class MalformedPayload(ProtocolError):
    """Not JSON, or JSON that is not an object."""

    kind = "malformed"


class UnsupportedSchema(ProtocolError):
    """A ``schema`` version this build does not speak (newer sender, or garbage)."""

    kind = "unsupported_schema"


class InvalidPayload(ProtocolError):
    """Valid JSON with the right schema version whose fields fail validation."""

    kind = "invalid"
