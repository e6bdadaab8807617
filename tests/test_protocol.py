"""Wire protocol v1: topics round-trip, every payload validates, bad input raises typed errors."""

from __future__ import annotations

import json

import pytest

from shared.protocol import (
    Alert,
    CloudCapabilities,
    DeviceStatus,
    InvalidPayload,
    Kind,
    MalformedPayload,
    ModelState,
    PayloadTooLarge,
    Prediction,
    PredictionBatch,
    ReleaseNotice,
    Snapshot,
    Telemetry,
    Topics,
    UnknownTopic,
    UnsupportedSchema,
    UpdateRequest,
    UpdateResponse,
    decode,
    encode,
    parse_topic,
)
from shared.protocol.counter import RejectCounter


def _batch(device: str = "box1", site: str = "bcn") -> PredictionBatch:
    return PredictionBatch(
        device=device,
        site=site,
        predictions=[
            Prediction(
                seq=i,
                ts=1_795_500_000.0 + i,
                camera="gate",
                label="dog",
                confidence=0.9,
                probs={"cat": 0.1, "dog": 0.9},
                model_version="m1",
            )
            for i in (7, 8, 9)
        ],
    )


EXAMPLES = [
    (Topics.device("bcn", "box1", Kind.STATUS), DeviceStatus(device="box1", site="bcn", state="online")),
    (
        Topics.device("bcn", "box1", Kind.TELEMETRY),
        Telemetry(
            device="box1",
            site="bcn",
            cpu_percent=12.5,
            memory_percent=40,
            disk_percent=10,
            uptime_process_s=5,
            uptime_system_s=100,
            temperatures=None,
        ),
    ),
    (Topics.device("bcn", "box1", Kind.PREDICTIONS), _batch()),
    (
        Topics.device("bcn", "box1", Kind.MODEL_STATE),
        ModelState(device="box1", site="bcn", state="active", version="m1"),
    ),
    (
        Topics.device("bcn", "box1", Kind.SNAPSHOT),
        Snapshot(
            device="box1",
            site="bcn",
            id="gate-1795500000000-1a2b3c4d",
            camera="gate",
            ts=1_795_500_000.0,
            jpeg="/9j/4AAQSkZJRg==",
        ),
    ),
    (Topics.device("bcn", "box1", Kind.UPDATE_REQUEST), UpdateRequest(path="metadata/timestamp.json")),
    (Topics.device("bcn", "box1", Kind.UPDATE_RESPONSE), UpdateResponse(path="x", status="not_found")),
    (Topics.release("production"), ReleaseNotice(group="production", version="m2")),
    (Topics.CAPABILITIES, CloudCapabilities(predictions=[1, 2])),
    (
        Topics.alerts("bcn"),
        Alert(
            id="a1", site="bcn", rule="offline", severity="warning", state="open", message="box1 is offline"
        ),
    ),
]


@pytest.mark.parametrize(("topic", "msg"), EXAMPLES, ids=[type(m).__name__ for _, m in EXAMPLES])
def test_every_message_round_trips(topic: str, msg: object) -> None:
    parsed, back = decode(topic, encode(msg))  # type: ignore[arg-type]
    assert back == msg
    assert json.loads(encode(msg))["schema"] == 1
    assert parsed.kind == parse_topic(topic).kind


def test_topic_parsing() -> None:
    p = parse_topic("parkwatch/v1/dev/bcn/box1/model/state")
    assert (p.kind, p.site, p.device) == (Kind.MODEL_STATE, "bcn", "box1")
    assert parse_topic("parkwatch/v1/release/staging").group == "staging"
    for bad in [
        "other/v1/dev/a/b/status",
        "parkwatch/v1/dev/a/b/nope",
        "parkwatch/v1/dev/a/status",
        "parkwatch/v1/release/a/b",
        "parkwatch/v2/dev/a/b/status",
        "parkwatch/v1/dev/+/b/status",
    ]:
        with pytest.raises(UnknownTopic):
            parse_topic(bad)
    with pytest.raises(ValueError, match="letters, digits"):
        Topics.device("bad site", "x", Kind.STATUS)


def test_bad_payloads_raise_typed_errors() -> None:
    topic = Topics.device("bcn", "box1", Kind.PREDICTIONS)
    good = json.loads(encode(_batch()))
    with pytest.raises(MalformedPayload):
        decode(topic, b"\xff\xfe not json")
    with pytest.raises(MalformedPayload):
        decode(topic, b"[1, 2]")
    with pytest.raises(MalformedPayload, match="nests too deeply"):
        decode(topic, b"[" * 100_000 + b"]" * 100_000, max_bytes=10**6)
    with pytest.raises(UnsupportedSchema):
        decode(topic, json.dumps({**good, "schema": 3}))  # prediction batches speak 1 and 2
    with pytest.raises(UnsupportedSchema):
        decode(
            Topics.device("bcn", "box1", Kind.STATUS),
            encode(EXAMPLES[0][1]).replace(b'"schema":1', b'"schema":2'),
        )
    with pytest.raises(UnsupportedSchema):
        decode(topic, json.dumps({k: v for k, v in good.items() if k != "schema"}))
    with pytest.raises(PayloadTooLarge):
        decode(topic, b"{" + b" " * 5000 + b"}", max_bytes=4096)
    with pytest.raises(InvalidPayload, match="confidence"):
        bad = json.loads(json.dumps(good))
        bad["predictions"][0]["confidence"] = 1.5
        decode(topic, json.dumps(bad))
    with pytest.raises(InvalidPayload, match="strictly increasing"):
        bad = json.loads(json.dumps(good))
        bad["predictions"][1]["seq"] = 7
        decode(topic, json.dumps(bad))
    with pytest.raises(InvalidPayload, match=r"unexpected|Extra"):
        decode(topic, json.dumps({**good, "surprise": 1}))
    with pytest.raises(InvalidPayload, match="seq"):  # would not fit the SQLite INTEGER it is stored in
        bad = json.loads(json.dumps(good))
        bad["predictions"][-1]["seq"] = 2**63
        decode(topic, json.dumps(bad))
    for number in ("NaN", "Infinity", "-Infinity"):  # Python's json writes these; SQLite cannot keep NaN
        bad = json.loads(json.dumps(good))
        bad["predictions"][1]["ts"] = float(number.replace("Infinity", "inf"))
        with pytest.raises(InvalidPayload, match="ts"):
            decode(topic, json.dumps(bad))


def test_a_device_cannot_speak_for_another() -> None:
    with pytest.raises(InvalidPayload, match="another device"):
        decode(Topics.device("bcn", "box2", Kind.PREDICTIONS), encode(_batch(device="box1")))
    with pytest.raises(InvalidPayload, match="another group"):
        decode(Topics.release("staging"), encode(ReleaseNotice(group="production")))


def test_reject_counter_counts_by_kind_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    counter = RejectCounter()
    for payload in (b"nope", b"nope", b'{"schema": 9}'):
        try:
            decode(Topics.device("bcn", "box1", Kind.STATUS), payload)
        except (MalformedPayload, UnsupportedSchema) as e:
            counter.reject(e)
    assert counter.snapshot() == {"malformed": 2, "unsupported_schema": 1}
    assert counter.total == 3
    assert sum("dropping invalid message" in r.message for r in caplog.records) == 2


# -- the encoder: orjson writes, the bytes stay json.dumps' --------------------------------------


def _json_dumps(msg: PredictionBatch | Telemetry) -> bytes:
    """What every build before orjson put on the wire."""
    return json.dumps(msg.to_wire(), separators=(",", ":")).encode("utf-8")


def _pred(seq: int, probs: dict[str, float], **kw: object) -> Prediction:
    base: dict[str, object] = {
        "seq": seq,
        "ts": 1_795_500_000.25 + seq,
        "camera": "gate",
        "label": "cat",
        "confidence": 0.9,
        "probs": probs,
        "model_version": "m1",
    }
    return Prediction.model_validate(base | kw)


@pytest.mark.parametrize(
    "probs",
    [
        {"cat": 0.999982, "dog": 1.8e-05, "none": 0.0},  # orjson alone: 0.000018
        {"cat": 0.99, "dog": 2.3e-06, "none": 1e-05},  # orjson alone: 2.3e-6, 0.00001
        {"cat": 5e-324, "dog": 1e-100, "none": 0.0001},
        {"cat": 0.1, "dog": 0.2, "none": 0.7},
    ],
)
def test_encode_writes_the_bytes_json_dumps_wrote(probs: dict[str, float]) -> None:
    b = PredictionBatch.for_cloud("box1", "bcn", [_pred(1, probs), _pred(2, probs, latency_ms=3e-05)], (1, 2))
    assert encode(b) == _json_dumps(b)


def test_encode_non_ascii_and_huge_ints_fall_back_to_json() -> None:
    b = PredictionBatch.for_cloud("box1", "bcn", [_pred(1, {"chat": 0.5}, camera="Jardín 🐈")], (1,))
    assert encode(b) == _json_dumps(b) and b"\\u00ed" in encode(b)  # escaped, as before
    tel = Telemetry(
        device="box1",
        site="bcn",
        cpu_percent=1e-05,
        memory_percent=2,
        disk_percent=3,
        uptime_process_s=4,
        uptime_system_s=2**70,  # beyond orjson's 64-bit ints
    )
    assert encode(tel) == _json_dumps(tel)


def test_encode_matches_json_dumps_for_any_probabilities() -> None:
    """Property check across magnitudes and rounding (the box rounds to 6 decimals)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    prob = st.one_of(
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False).map(lambda v: round(v, 6)),
        st.floats(min_value=0.0, max_value=1e-3, allow_nan=False),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.dictionaries(st.sampled_from(["cat", "dog", "none"]), prob), min_size=1, max_size=5))
    def check(rows: list[dict[str, float]]) -> None:
        b = PredictionBatch.for_cloud("box1", "bcn", [_pred(i + 1, p) for i, p in enumerate(rows)], (1, 2))
        assert encode(b) == _json_dumps(b)

    check()
