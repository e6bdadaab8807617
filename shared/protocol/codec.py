"""``decode(topic, payload)``: the one place incoming bytes become trusted objects."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import orjson
from pydantic import ValidationError

from shared.protocol.bounds import problem
from shared.protocol.errors import InvalidPayload, MalformedPayload, PayloadTooLarge, UnsupportedSchema
from shared.protocol.messages import (
    PREDICTION_SCHEMAS,
    SCHEMA_VERSION,
    TELEMETRY_SCHEMAS,
    Alert,
    CloudCapabilities,
    DeviceStatus,
    Message,
    ModelState,
    PredictionBatch,
    ReleaseNotice,
    Snapshot,
    Telemetry,
    UpdateRequest,
    UpdateResponse,
)
from shared.protocol.topics import Kind, ParsedTopic, parse_topic

DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024

MODEL_FOR_KIND: dict[Kind, type[Message]] = {
    Kind.STATUS: DeviceStatus,
    Kind.TELEMETRY: Telemetry,
    Kind.PREDICTIONS: PredictionBatch,
    Kind.MODEL_STATE: ModelState,
    Kind.SNAPSHOT: Snapshot,
    Kind.UPDATE_REQUEST: UpdateRequest,
    Kind.UPDATE_RESPONSE: UpdateResponse,
    Kind.RELEASE: ReleaseNotice,
    Kind.ALERT: Alert,
    Kind.CAPABILITIES: CloudCapabilities,
}
# The schema versions this build accepts per kind (all others: SCHEMA_VERSION only).
SCHEMAS_FOR_KIND: dict[Kind, tuple[int, ...]] = {
    Kind.PREDICTIONS: PREDICTION_SCHEMAS,
    Kind.TELEMETRY: TELEMETRY_SCHEMAS,
}


# Where orjson spells a value differently from ``json.dumps``: floats below 1e-4 in magnitude,
# ``0.00001`` or ``2.3e-6`` against Python's ``1e-05`` and ``2.3e-06`` (a one-digit negative
# exponent, or a run of zeros Python never writes). Every other finite float and every int it
# spells alike (tests/test_protocol.py). A match inside a string only costs the slower path.
# Two literal-led searches: one alternation without a literal prefix was slower than json.
_ORJSON_EXPONENT = re.compile(rb"e-[0-9](?![0-9])")
_ORJSON_ZEROS = b"0.0000"


def encode(msg: Message) -> bytes:
    """The message's wire bytes, exactly those ``json.dumps(wire, separators=(",", ":"))`` writes.

    Encoding was a third of the box's publish step (200 predictions a batch), so orjson writes
    it; the bytes stay the old encoder's, so nothing that compares, hashes or replays payloads
    can tell (``tests/test_protocol.py``). Floats it would spell differently are handed to it
    pre-spelled by ``repr`` (small probabilities first: nearly every batch has some); a payload
    with non-ASCII text, which json escapes and orjson does not, goes through json itself. The one
    difference left: a NaN or infinity, which no validated message holds (``allow_inf_nan=False``),
    is written as ``null`` where json wrote ``NaN``, a token no JSON parser of ours accepted.
    """
    wire = msg.to_wire()
    if isinstance(msg, PredictionBatch):
        for pred in wire["predictions"]:
            probs = pred["probs"]
            for label, v in probs.items():
                if -1e-4 < v < 1e-4 and v != 0.0:
                    probs[label] = orjson.Fragment(repr(v))
    try:
        out = orjson.dumps(wire)
    except TypeError:  # an int beyond 64 bits: json takes it, orjson does not
        return _std_encode(msg)
    if not out.isascii():
        return _std_encode(msg)
    if _ORJSON_ZEROS not in out and _ORJSON_EXPONENT.search(out) is None:
        return out
    _respell_small_floats(wire)
    return orjson.dumps(wire)


def _std_encode(msg: Message) -> bytes:
    return json.dumps(msg.to_wire(), separators=(",", ":")).encode("utf-8")


def _respell_small_floats(node: dict[str, Any] | list[Any]) -> None:
    """Replace, in place, each float that orjson would spell unlike ``repr`` by its repr."""
    pairs = node.items() if type(node) is dict else enumerate(node)
    for key, v in pairs:  # values only change, so iterating stays valid
        t = type(v)
        if t is float:
            if -1e-4 < v < 1e-4 and v != 0.0:
                node[key] = orjson.Fragment(repr(v))  # type: ignore[index]
        elif t is dict or t is list:
            _respell_small_floats(v)


def decode(
    topic: str, payload: bytes | bytearray | str, max_bytes: int = DEFAULT_MAX_PAYLOAD
) -> tuple[ParsedTopic, Message]:
    """Validate a received message; raises a :class:`ProtocolError` subclass on anything wrong.

    Device-scoped payloads must name the same site/device as their topic, so a device cannot
    speak for another one even where the broker ACL is missing.
    """
    parsed = parse_topic(topic)
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"{topic}: payload of {len(raw)} bytes exceeds {max_bytes}")
    model = MODEL_FOR_KIND[parsed.kind]
    try:
        # Fast path: pydantic parses and validates the JSON in one pass (about twice as quick as
        # json.loads + model_validate). The payload must also have *said* its schema version.
        msg = model.model_validate_json(raw)
        if "schema_version" not in msg.model_fields_set:
            raise UnsupportedSchema(f"{topic}: schema None is not supported ({_speaks(parsed.kind)})")
    except ValidationError:
        # Slow path only to tell the sender precisely what is wrong, by kind.
        msg = _validate_slowly(topic, raw, model, parsed.kind)
    return _check_scope(topic, parsed, msg)


def _speaks(kind: Kind) -> str:
    versions = SCHEMAS_FOR_KIND.get(kind, (SCHEMA_VERSION,))
    return "this build speaks " + " and ".join(str(v) for v in versions)


def _validate_slowly(topic: str, raw: bytes, model: type[Message], kind: Kind) -> Message:
    try:
        obj: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedPayload(f"{topic}: payload is not JSON: {e}") from e
    except RecursionError as e:  # nesting no payload of ours has; refused like any malformed one
        raise MalformedPayload(f"{topic}: payload nests too deeply to be one of ours") from e
    if not isinstance(obj, dict):
        raise MalformedPayload(f"{topic}: payload must be a JSON object")
    version = obj.get("schema")
    if type(version) is not int or version not in SCHEMAS_FOR_KIND.get(kind, (SCHEMA_VERSION,)):
        raise UnsupportedSchema(f"{topic}: schema {version!r} is not supported ({_speaks(kind)})")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidPayload(f"{topic}: {where}: {first['msg']}") from e


def _check_scope(topic: str, parsed: ParsedTopic, msg: Message) -> tuple[ParsedTopic, Message]:
    if parsed.device is not None:
        site = getattr(msg, "site", parsed.site)
        device = getattr(msg, "device", parsed.device)
        if (site, device) != (parsed.site, parsed.device):
            raise InvalidPayload(f"{topic}: payload names {site}/{device}, topic another device")
        # What a device sends is also bounded (timestamps, ids, sizes): see bounds.py.
        why = problem(msg, time.time())
        if why is not None:
            raise InvalidPayload(f"{topic}: {why}")
    if parsed.group is not None and getattr(msg, "group", parsed.group) != parsed.group:
        raise InvalidPayload(f"{topic}: payload names another group")
    return parsed, msg
