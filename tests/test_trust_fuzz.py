"""Fuzzing with Hypothesis: the protocol decoder and the inbox → materializer path.

Each test runs at least 10,000 generated cases (slow-marked). A case is a topic and a payload:
raw bytes, arbitrary JSON, or a valid message with one field replaced, dropped or added. The
promise under test is the protocol's: every input is either accepted or refused with a
``ProtocolError`` whose kind is counted — never another exception (a crash), and in the ingest
never a message left behind or stored without being either a row or a dead letter.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.config import CloudConfig
from cloud.fleet.inbox import Inbox, inbox_path
from cloud.fleet.materialize import REJECT_KINDS, Materializer
from cloud.fleet.store import FleetStore
from shared.protocol import Kind, ProtocolError, Topics, decode
from shared.protocol.counter import RejectCounter

CASES = 10_000
NOW = time.time()
KNOWN_KINDS = {"unknown_topic", "too_large", "malformed", "unsupported_schema", "invalid"}

# ---- strategies ------------------------------------------------------------------------------

ids = st.one_of(
    st.sampled_from(["park1", "box1", "gate", "staging", "a", "x" * 64]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True),
    st.text(max_size=20),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -1.0, 1e300, 1e12, NOW, NOW + 1e6, 946_684_799.0, 2**63, 2**64]),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def _prediction(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": NOW,
        "camera": "gate",
        "label": "dog",
        "confidence": 0.9,
        "probs": {"cat": 0.1, "dog": 0.9},
        "model_version": "m1",
        "abstain": False,
        "flags": [],
        "latency_ms": 12.0,
        "frame_ts": NOW,
        "snapshot": None,
    }


def _valid(kind: Kind, site: str, device: str) -> dict[str, Any]:
    common = {"schema": 1, "device": device, "site": site}
    if kind is Kind.PREDICTIONS:
        return {**common, "predictions": [_prediction(1), _prediction(2)], "sent_ts": NOW, "evicted_total": 0}
    if kind is Kind.TELEMETRY:
        return {
            **common,
            "ts": NOW,
            "seq": 1,
            "cpu_percent": 5.0,
            "memory_percent": 10.0,
            "disk_percent": 10.0,
            "uptime_process_s": 1.0,
            "uptime_system_s": 2.0,
            "cameras": {"gate": {"state": "streaming", "fps": 2.0, "last_frame_ts": NOW}},
            "latency_ms": {"p99": 40.0},
            "temperatures": {"cpu": 50.0},
        }
    if kind is Kind.STATUS:
        return {**common, "state": "online", "ts": NOW, "group": "staging", "software": "1"}
    if kind is Kind.MODEL_STATE:
        return {**common, "state": "active", "version": "m1", "active_version": "m1", "ts": NOW}
    if kind is Kind.SNAPSHOT:
        return {**common, "id": "gate-1-abc", "camera": "gate", "ts": NOW, "jpeg": "/9j/4AAQSkZJRg=="}
    if kind is Kind.UPDATE_REQUEST:
        return {"schema": 1, "path": "metadata/timestamp.json", "offset": 0, "length": 4096}
    return {"schema": 1, "path": "x", "status": "ok", "data": ""}


DEVICE_KINDS = [Kind.PREDICTIONS, Kind.TELEMETRY, Kind.STATUS, Kind.MODEL_STATE, Kind.SNAPSHOT]


@st.composite
def mutated(draw: st.DrawFn, kinds: list[Kind]) -> tuple[str, bytes]:
    """A valid message of a random kind, then zero to three mutations anywhere in it."""
    kind = draw(st.sampled_from(kinds))
    site = draw(st.sampled_from(["park1", "park2"]))
    device = draw(st.sampled_from(["box1", "box2"]))
    obj = _valid(kind, site, device)
    for _ in range(draw(st.integers(0, 3))):
        target: Any = obj
        nested = (
            [
                v
                for v in (*(obj.get("predictions") or []), (obj.get("cameras") or {}).get("gate"))
                if isinstance(v, dict) and v
            ]
            if isinstance(obj.get("predictions", []), list) and isinstance(obj.get("cameras", {}), dict)
            else []
        )
        go_deeper: bool = draw(st.booleans())
        if nested and go_deeper:
            target = draw(st.sampled_from(nested))
        if not target:
            continue
        op = draw(st.sampled_from(["replace", "drop", "add"]))
        key = draw(st.sampled_from(sorted(target)))
        if op == "replace":
            target[key] = draw(json_values)
        elif op == "drop":
            target.pop(key, None)
        else:
            target[draw(st.text(max_size=8))] = draw(json_values)
    if kind is Kind.PREDICTIONS and draw(st.booleans()):
        obj["predictions"] = [
            _prediction(s) for s in draw(st.lists(st.integers(-5, 2**64), min_size=1, max_size=4))
        ]
    topic_site = draw(st.sampled_from([site, "park1"]))  # sometimes another device's topic
    topic = Topics.device(topic_site, device, kind)
    text = json.dumps(obj, allow_nan=True)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace(str(NOW), draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])), 1)
    return topic, text.encode()


raw_topics = st.one_of(
    st.builds(
        lambda s, d, k: Topics.device("park1", "box1", k) if not s else f"parkwatch/v1/dev/{s}/{d}/{k.value}",
        ids,
        ids,
        st.sampled_from(DEVICE_KINDS),
    ),
    st.text(max_size=80),
    st.just("parkwatch/v1/release/staging"),
)
raw_payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=10), json_values, max_size=8).map(
        lambda d: json.dumps({"schema": 1, **d}).encode()
    ),
)
cases = st.one_of(
    mutated([*DEVICE_KINDS, Kind.UPDATE_REQUEST, Kind.UPDATE_RESPONSE]), st.tuples(raw_topics, raw_payloads)
)
ingest_cases = st.one_of(mutated(DEVICE_KINDS[:4]), st.tuples(raw_topics, raw_payloads))

FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases on every run and in CI: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _decode(topic: str, payload: bytes) -> None:
    try:
        # decode takes any topic string; one that is not ours is an UnknownTopic, not a crash.
        decode(topic, payload)
    except ProtocolError:
        raise
    except ValueError as e:  # topic builders of the test itself
        raise AssertionError(f"decode raised {e!r}") from e


# ---- the decoder -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 10,000 cases: a few minutes on a loaded 2-core machine
def test_fuzz_protocol_decoder() -> None:
    counter = RejectCounter()
    seen: Counter[str] = Counter()
    crashes: list[str] = []

    @FUZZ
    @given(cases)
    def one(case: tuple[str, bytes]) -> None:
        topic, payload = case
        seen["cases"] += 1
        try:
            decode(topic, payload)
        except ProtocolError as e:
            counter.reject(e)
            seen["refused"] += 1
        except Exception as e:  # a crash: any exception that is not a counted refusal
            crashes.append(f"{type(e).__name__}: {e} <- {topic!r} {payload[:200]!r}")
        else:
            seen["accepted"] += 1

    one()
    assert crashes == [], crashes[:5]
    counts = counter.snapshot()
    assert seen["cases"] >= CASES
    assert set(counts) <= KNOWN_KINDS, counts
    assert sum(counts.values()) == seen["refused"] and seen["accepted"] + seen["refused"] == seen["cases"]
    # The generator reaches every kind of refusal and also valid messages.
    reached = {"unknown_topic", "malformed", "invalid", "unsupported_schema"}
    assert seen["accepted"] > CASES // 50 and reached <= set(counts), (seen, counts)


# ---- the inbox and the materializer -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 10,000 inbox appends and materializer steps: up to ~10 minutes here
def test_fuzz_inbox_and_materializer(tmp_path: Path) -> None:
    cfg = CloudConfig.model_validate({"data_dir": str(tmp_path / "cloud"), "fleet": {"client_id": "fuzz"}})
    inbox = Inbox(inbox_path(cfg.paths, "fuzz"), synchronous="OFF")
    mat = Materializer(cfg, "fuzz", lock_wait_s=5)
    mat.writer.db.execute("PRAGMA synchronous=OFF")  # speed only: the fsyncs are not under test
    mat.inbox.conn.execute("PRAGMA synchronous=OFF") if hasattr(mat.inbox, "conn") else None
    seen: Counter[str] = Counter()
    crashes: list[str] = []

    @FUZZ
    @given(ingest_cases)
    def one(case: tuple[str, bytes]) -> None:
        topic, payload = case
        seen["cases"] += 1
        inbox.append([(topic, payload, time.time(), False)])
        try:
            consumed = mat.step()
        except Exception as e:  # a crash of the materializer
            crashes.append(f"{type(e).__name__}: {e} <- {topic!r} {payload[:200]!r}")
            mat.upto = max(mat.upto, inbox.take(mat.upto, 1)[0][0]) if inbox.take(mat.upto, 1) else mat.upto
            return
        if consumed != 1:
            crashes.append(f"step consumed {consumed} rows for one message <- {topic!r}")

    try:
        one()
        assert crashes == [], crashes[:5]
        assert seen["cases"] >= CASES
        assert mat.inbox.backlog() == 0, "messages left behind in the inbox"
        refused = mat.rejects.snapshot()
        # An unexpected exception inside decode is counted as "protocol": that is a crash too.
        assert "protocol" not in refused, refused
        assert set(refused) <= set(REJECT_KINDS), refused
        with FleetStore(cfg.paths.fleet_db) as store:
            letters = store.query("SELECT kind, count(*) AS n FROM dead_letters GROUP BY kind")
            by_kind = {r["kind"]: r["n"] for r in letters}
            assert by_kind == refused, (by_kind, refused)  # every refusal kept, by kind
            # Counted in the fleet store in each batch's own transaction: nothing left to flush.
            counters = {
                k.split(".", 1)[1]: v for k, v in store.counters().items() if k.startswith("rejected.")
            }
            assert counters == refused, (counters, refused)
            stored = store.prediction_count()
            for row in store.query("SELECT ts FROM predictions"):
                assert math.isfinite(row["ts"])
        assert stored > 0 and sum(refused.values()) > 0
    finally:
        mat.close()
        inbox.close()
