"""Schema-2 prediction batches (regions, ir, ``none``) and the capability negotiation that keeps
old clouds working: real Mosquitto, the box's real outbox, MQTT link and publisher, and the
cloud's real fleet ingest."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pydantic import ValidationError

from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from edge.mqttlink import MqttLink
from edge.outbox import Outbox
from edge.publisher import Publisher
from shared.broker import EmbeddedBroker
from shared.config import MqttConfig
from shared.protocol import (
    IR_FLAG,
    CloudCapabilities,
    InvalidPayload,
    Kind,
    Prediction,
    PredictionBatch,
    PredRegion,
    Telemetry,
    Topics,
    UnsupportedSchema,
    decode,
    encode,
)
from tests import old_protocol_v1 as old
from tests.fleetutil import cloud_cfg, wait_for

TOPIC = Topics.device("bcn", "box1", Kind.PREDICTIONS)


def _pred(seq: int, **kw: Any) -> Prediction:
    base: dict[str, Any] = {
        "seq": seq,
        "ts": 1795500000.0 + seq,
        "camera": "gate",
        "label": "cat",
        "confidence": 0.9,
        "probs": {"cat": 0.9, "dog": 0.05, "none": 0.05},
        "model_version": "m1",
    }
    return Prediction(**(base | kw))


def _with_regions(seq: int) -> Prediction:
    return _pred(
        seq,
        regions=[
            PredRegion(box=[10, 20, 300, 200], label="cat", confidence=0.9),
            PredRegion(box=[900, 400, 256, 256], label="dog", confidence=0.8),
        ],
        ir=True,
    )


def test_schema1_batch_is_exactly_what_an_old_cloud_accepts() -> None:
    preds = [_with_regions(1), _pred(2, label="none", ir=False), _pred(3, label="abstain", abstain=True)]
    b1 = PredictionBatch.for_cloud("box1", "bcn", preds, accepted=(1,))
    wire = encode(b1)
    got = old.PredictionBatch.model_validate_json(wire)  # the pre-schema-2 model, extra="forbid"
    assert got.predictions[0].flags == [IR_FLAG] and got.predictions[1].flags == []
    assert "regions" not in json.loads(wire)["predictions"][0]
    # the negative control: schema 2 is refused by the old model, so the check above can fail
    b2 = PredictionBatch.for_cloud("box1", "bcn", preds, accepted=(1, 2))
    with pytest.raises(ValidationError):
        old.PredictionBatch.model_validate_json(encode(b2))
    # the new decoder accepts both and keeps the regions of schema 2
    _, new = decode(TOPIC, encode(b2))
    assert isinstance(new, PredictionBatch) and new.schema_version == 2
    assert [r.label for r in new.predictions[0].regions] == ["cat", "dog"]
    assert new.predictions[0].ir is True and new.predictions[1].label == "none"
    _, new1 = decode(TOPIC, wire)
    assert isinstance(new1, PredictionBatch) and new1.predictions[0].regions == []


def test_telemetry_none_rate_only_in_schema2_and_schema1_is_what_an_old_cloud_accepts() -> None:
    topic = Topics.device("bcn", "box1", Kind.TELEMETRY)
    base: dict[str, Any] = {
        "device": "box1",
        "site": "bcn",
        "cpu_percent": 1.0,
        "memory_percent": 2.0,
        "disk_percent": 3.0,
        "uptime_process_s": 4.0,
        "uptime_system_s": 5.0,
        "abstain_rate": 0.1,
    }
    t1 = Telemetry(**base)
    assert "none_rate" not in json.loads(encode(t1))
    old.Telemetry.model_validate_json(encode(t1))
    t2 = Telemetry(**base, schema_version=2, none_rate=0.7)
    with pytest.raises(ValidationError):
        old.Telemetry.model_validate_json(encode(t2))
    _, back = decode(topic, encode(t2))
    assert isinstance(back, Telemetry) and back.none_rate == 0.7 and back.schema_version == 2
    with pytest.raises(ValidationError, match="schema 2"):
        Telemetry(**base, none_rate=0.7)
    bad = json.loads(encode(t2))
    bad["schema"] = 1
    with pytest.raises(InvalidPayload, match="schema 2"):
        decode(topic, json.dumps(bad))


def test_regions_are_bounded_and_schema1_cannot_carry_them() -> None:
    body = json.loads(encode(PredictionBatch.for_cloud("box1", "bcn", [_with_regions(1)], (1, 2))))
    for bad_box in ([0, 0, 0, 10], [-1, 0, 5, 5], [16000, 0, 1000, 5], [0, 0, 5], [0.5, 0, 5, 5]):
        b = json.loads(json.dumps(body))
        b["predictions"][0]["regions"][0]["box"] = bad_box
        with pytest.raises(InvalidPayload, match="box"):
            decode(TOPIC, json.dumps(b))
    b = json.loads(json.dumps(body))
    b["predictions"][0]["regions"] = b["predictions"][0]["regions"] * 17  # 34 > 32
    with pytest.raises(InvalidPayload, match="regions"):
        decode(TOPIC, json.dumps(b))
    b = json.loads(json.dumps(body))
    b["schema"] = 1
    with pytest.raises(InvalidPayload, match="schema 2"):
        decode(TOPIC, json.dumps(b))
    b["schema"] = 3
    with pytest.raises(UnsupportedSchema, match="1 and 2"):
        decode(TOPIC, json.dumps(b))
    # other kinds stay schema 1 only
    caps = json.loads(encode(CloudCapabilities(predictions=[1, 2])))
    caps["schema"] = 2
    with pytest.raises(UnsupportedSchema):
        decode(Topics.CAPABILITIES, json.dumps(caps))


class _Listener:
    """A plain subscriber on the box's prediction topic: what any cloud would receive."""

    def __init__(self, port: int) -> None:
        self.got: list[bytes] = []
        self._subbed = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id="listener"
        )
        c.on_message = lambda _c, _u, m: self.got.append(bytes(m.payload))
        c.on_subscribe = lambda *_a: self._subbed.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(TOPIC, qos=1)
        assert self._subbed.wait(10)
        self.c = c

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _row(i: int) -> dict[str, Any]:
    p = _with_regions(i + 1).model_dump(mode="json")
    del p["seq"]
    return p


def test_box_sends_schema2_only_after_the_cloud_advertised_it(tmp_path: Path, broker: EmbeddedBroker) -> None:
    listener = _Listener(broker.port)
    outbox = Outbox(tmp_path / "outbox.db")
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port, keepalive=5), "bcn", "box1")
    pub = Publisher(outbox, link, batch_size=5, flush_interval_s=0.05)
    link.start()
    pub.start()
    ing: FleetIngest | None = None
    try:
        assert link.wait_connected(10)
        # 1. no capabilities retained (an old cloud): every batch is one the old model accepts
        outbox.append([_row(i) for i in range(10)])
        pub.notify(10)
        wait_for(lambda: outbox.backlog == 0, what="the first 10 predictions acknowledged")
        wait_for(
            lambda: sum(len(json.loads(b)["predictions"]) for b in listener.got) == 10, what="10 received"
        )
        assert link.cloud_prediction_schemas == (1,)
        for raw in listener.got:
            batch = old.PredictionBatch.model_validate_json(raw)
            assert all(p.flags == [IR_FLAG] for p in batch.predictions)
        # 2. the new cloud's fleet ingest starts and advertises schema 2 (retained)
        cfg = cloud_cfg(tmp_path, broker)
        ing = FleetIngest(cfg)
        ing.start()
        assert ing.wait_connected(10)
        wait_for(lambda: link.cloud_prediction_schemas == (1, 2), what="the box to learn the capabilities")
        listener.got.clear()
        outbox.append([_row(i) for i in range(10, 20)])
        pub.notify(10)
        wait_for(lambda: outbox.backlog == 0, what="the next 10 predictions acknowledged")
        store = FleetStore(cfg.paths.fleet_db)
        wait_for(lambda: store.prediction_count() == 10, what="the new cloud to store the schema-2 batch")
        wait_for(
            lambda: sum(len(json.loads(b)["predictions"]) for b in listener.got) == 10, what="10 received"
        )
        for raw in listener.got:
            _, got = decode(TOPIC, raw)
            assert isinstance(got, PredictionBatch) and got.schema_version == 2
            assert all(len(p.regions) == 2 and p.ir is True and p.flags == [] for p in got.predictions)
            assert got.predictions[0].regions[0].box == [10, 20, 300, 200]
        # 3. the capabilities cleared (a cloud rolled back clears them): back to schema 1
        ing.stop()
        ing = None
        clear = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        clear.connect("127.0.0.1", broker.port)
        clear.loop_start()
        clear.publish(Topics.CAPABILITIES, b"", qos=1, retain=True).wait_for_publish(5)
        clear.disconnect()
        clear.loop_stop()
        wait_for(lambda: link.cloud_prediction_schemas == (1,), what="the box to forget schema 2")
    finally:
        if ing is not None:
            ing.stop()
        pub.stop(0.5)
        link.stop()
        outbox.close()
        listener.close()
