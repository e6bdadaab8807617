"""The update responder authorises against the provisioned group and paces each device.

Real ReleaseService (its responder on a real Mosquitto, the signed TUF repository on disk,
release.db for membership). Before the fix any device could fetch every group's package, and one
device's flood of requests was queued without limit, each answered with up to a 256 KiB chunk.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.release.responder import authorise
from cloud.release.server import ReleaseService
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, Topics, UpdateRequest, UpdateResponse, decode, encode
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import cloud_config, make_version, mqtt_cfg, register, wait_for


class Box:
    """A device's update channel, raw: any path, any number of requests at once."""

    def __init__(self, port: int, site: str, device: str) -> None:
        self.site, self.device = site, device
        self.answers: dict[bytes, UpdateResponse] = {}
        self._lock = threading.Lock()
        self._n = 0
        self.resp_topic = Topics.device(site, device, Kind.UPDATE_RESPONSE)
        self.req_topic = Topics.device(site, device, Kind.UPDATE_REQUEST)
        subbed = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5,
            client_id=f"t-{site}-{device}",
        )
        c.on_message = self._on_message
        c.on_subscribe = lambda *_a: subbed.set()
        c.on_connect = lambda cl, *_a: cl.subscribe(self.resp_topic, qos=1)
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert subbed.wait(10)
        self.c = c

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        _, resp = decode(msg.topic, msg.payload)
        assert isinstance(resp, UpdateResponse)
        with self._lock:
            self.answers[bytes(msg.properties.CorrelationData)] = resp

    def ask(self, path: str, length: int = 4096) -> bytes:
        with self._lock:
            self._n += 1
            corr = f"{self.device}-{self._n}".encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.resp_topic
        props.CorrelationData = corr
        self.c.publish(
            self.req_topic, encode(UpdateRequest(path=path, length=length)), qos=1, properties=props
        )
        return corr

    def get(self, path: str) -> UpdateResponse:
        corr = self.ask(path)
        return wait_for(lambda: self.answers.get(corr), 20, f"an answer for {path}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _service(tmp_path: Path, broker: EmbeddedBroker, base: Path, **release: Any) -> ReleaseService:
    """staging runs 1.0.0, production 2.0.0; stg1 is provisioned in staging, prod1 in production."""
    cfg = cloud_config(
        tmp_path / "cloud",
        mqtt_cfg(broker.port, client_id=f"release-{tmp_path.name}"[:60]),
        require_staging_before_production=False,
        **release,
    )
    svc = ReleaseService(cfg)
    svc.start()
    assert svc.wait_connected()
    ch = svc.channel
    assert ch is not None
    ch.keys_init("ops", allow_approver_key_on_server=True)  # a test install
    for v in ("1.0.0", "2.0.0"):
        register(cfg, make_version(base, tmp_path / "pkgs", v), v)
    ch.approve("1.0.0", "staging", "qa-anna", "ok")
    ch.approve("2.0.0", "production", "qa-anna", "ok")
    # provisioned first: a rollout to a group with no provisioned device is refused
    ch.provision_device("park1", "stg1", "staging", tmp_path / "stg1.secret", "ops")
    ch.provision_device("park1", "prod1", "production", tmp_path / "prod1.secret", "ops")
    ch.rollout("1.0.0", "staging", "eng-bob", "first")
    ch.rollout("2.0.0", "production", "eng-bob", "first")
    return svc


def _sha(svc: ReleaseService, group: str) -> str:
    assert svc.channel is not None
    t = svc.channel.repo.role("rollout").signed.targets[f"groups/{group}/model.tar"]
    return str(t.hashes["sha256"])


@pytest.fixture
def served(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> Iterator[ReleaseService]:
    svc = _service(tmp_path, broker, baseline_package)
    try:
        yield svc
    finally:
        svc.stop()


def test_authorise_is_pure_and_strict() -> None:
    sha = "a" * 64
    assert authorise("metadata/timestamp.json", None, None) is None
    assert authorise(f"targets/groups/staging/{sha}.model.tar", "staging", sha) is None
    assert authorise(f"targets/groups/production/{sha}.model.tar", "staging", sha) is not None
    assert authorise(f"targets/groups/staging/{'b' * 64}.model.tar", "staging", sha) is not None
    assert authorise(f"targets/builds/{sha}.1.0.0.tar", "staging", sha) is not None
    assert authorise(f"targets/groups/staging/{sha}.model.tar", None, None) is not None


def test_a_device_gets_only_its_groups_package(served: ReleaseService, broker: EmbeddedBroker) -> None:
    svc = served
    stg, prod = _sha(svc, "staging"), _sha(svc, "production")
    assert stg != prod
    stg1 = Box(broker.port, "park1", "stg1")
    fake = Box(broker.port, "park1", "fake1")  # never provisioned
    try:
        own = stg1.get(f"targets/groups/staging/{stg}.model.tar")
        assert own.status == "ok" and own.total and base64.b64decode(own.data)
        assert stg1.get("metadata/timestamp.json").status == "ok"
        other = stg1.get(f"targets/groups/production/{prod}.model.tar")
        assert other.status == "error" and other.data == "" and "may fetch only" in (other.error or "")
        smuggled = stg1.get(f"targets/groups/staging/{prod}.model.tar")  # right path, wrong blob
        assert smuggled.status == "error" and smuggled.data == ""
        via_build = stg1.get(f"targets/builds/{prod}.2.0.0.tar")
        assert via_build.status == "error" and via_build.data == ""
        stranger = fake.get(f"targets/groups/production/{prod}.model.tar")
        assert stranger.status == "error" and "provisioned" in (stranger.error or "")
        assert fake.get("metadata/timestamp.json").status == "ok"  # metadata is for everyone
        assert svc.responder.refused == {"forbidden": 3, "unknown_device": 1}
    finally:
        stg1.close()
        fake.close()


def test_a_flooding_device_is_paced_and_refused_without_starving_others(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    # One request per 20 s after the first: nothing of the flood but the first is served while
    # the test runs, so the counts below do not depend on the machine's speed.
    svc = _service(
        tmp_path,
        broker,
        baseline_package,
        responder_rate_per_device=0.05,
        responder_burst=1,
        responder_queue_per_device=4,
    )
    stg1 = Box(broker.port, "park1", "stg1")
    prod1 = Box(broker.port, "park1", "prod1")
    try:
        path = f"targets/groups/staging/{_sha(svc, 'staging')}.model.tar"
        corrs = [stg1.ask(path, 262144) for _ in range(200)]
        refused = lambda: [  # noqa: E731
            a
            for a in list(stg1.answers.values())
            if a.status == "error" and "already wait" in (a.error or "")
        ]
        wait_for(lambda: len(refused()) >= 200 - 5, 60, "the flood's refusals")
        ok = [c for c in corrs if (a := stg1.answers.get(c)) is not None and a.status == "ok"]
        assert len(ok) <= 1 and len(refused()) <= 200 - 4
        assert svc.responder.refused["queue_full"] == len(refused())
        assert svc.responder.served <= 1
        # Another device has its own bucket: served at once.
        assert prod1.get("metadata/timestamp.json").status == "ok"
    finally:
        stg1.close()
        prod1.close()
        svc.stop()
