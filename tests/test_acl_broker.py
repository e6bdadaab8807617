"""Broker access control with the real Mosquitto, the generated password file and ACL file."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud.release.brokerauth import check_password, hash_password
from cloud.release.channel import ReleaseChannel
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, Topics
from tests.release_support import cloud_config, mqtt_cfg, wait_for


class Client:
    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.suback: list[Any] = []
        self.connect_rc: Any = None
        self._connected = threading.Event()
        self._subbed = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5,
            client_id=f"t-{user}-{time.time_ns()}",
        )
        if user:
            c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        c.on_subscribe = self._on_subscribe
        self.c = c
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert self._connected.wait(10), f"{user} got no CONNACK from the broker"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connect_rc = rc
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any = None) -> None:
        self.suback = list(codes)
        self._subbed.set()

    def subscribe(self, topic: str) -> list[Any]:
        self._subbed.clear()
        self.c.subscribe(topic, qos=1)
        assert self._subbed.wait(10), f"no SUBACK for {topic}"
        return self.suback

    def saw(self, topic: str, payload: bytes) -> bool:
        return (topic, payload) in list(self.got)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, dict[str, str]]]:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1883))
    ch = ReleaseChannel(cfg)
    secrets = tmp_path / "secrets"
    ch.cloud_account(secrets / "cloud.secret", "ops")
    ch.provision_device("park1", "box1", "staging", secrets / "box1.secret", "ops")
    files = ch.provision_device("park1", "box2", "production", secrets / "box2.secret", "ops")
    pw = {n: (secrets / f"{n}.secret").read_text().strip() for n in ("cloud", "box1", "box2")}
    assert files.passwd is not None
    assert oct(Path(files.passwd).stat().st_mode & 0o777) == "0o640"
    assert oct((secrets / "box1.secret").stat().st_mode & 0o777) == "0o600"
    # EmbeddedBroker runs Mosquitto as the current user, so it can read these private files;
    # in production they are group-readable by mosquitto instead.
    b = EmbeddedBroker(
        tmp_path / "broker",
        allow_anonymous=False,
        extra_conf=f"password_file {files.passwd}\nacl_file {files.acl}\n",
    )
    b.start()
    try:
        yield b, pw
    finally:
        b.stop()


def test_password_hash_matches_mosquitto_format() -> None:
    h = hash_password("s3cret")
    assert h.startswith("$7$101$") and check_password("s3cret", h) and not check_password("other", h)


def test_device_is_confined_to_its_own_topics_and_group(
    acl_broker: tuple[EmbeddedBroker, dict[str, str]],
) -> None:
    broker, pw = acl_broker
    cloud = Client(broker.port, "parkwatch-cloud", pw["cloud"])
    box1 = Client(broker.port, "box1", pw["box1"])
    try:
        assert not cloud.connect_rc.is_failure and not box1.connect_rc.is_failure
        cloud.subscribe("parkwatch/v1/#")
        # box1 cannot speak as box2, but can speak as itself
        box1.publish(Topics.device("park1", "box2", Kind.STATUS), b"forged")
        box1.publish(Topics.device("park1", "box1", Kind.STATUS), b"genuine")
        # box1 cannot read another group's release, nor box2's update responses (Mosquitto 2 grants
        # the SUBSCRIBE but never delivers what the read ACL denies)
        box1.subscribe(Topics.release("production"))
        box1.subscribe(Topics.device("park1", "box2", Kind.UPDATE_RESPONSE))
        box1.subscribe("parkwatch/v1/#")
        box1.subscribe(Topics.release("staging"))
        cloud.publish(Topics.release("production"), b"prod notice", retain=True)
        cloud.publish(Topics.release("staging"), b"staging notice", retain=True)
        cloud.publish(Topics.device("park1", "box2", Kind.UPDATE_RESPONSE), b"for box2")
        # Messages on one connection arrive in order: once the last one published is here, the
        # forbidden ones published before it would have been too.
        staging, own_status = Topics.release("staging"), Topics.device("park1", "box1", Kind.STATUS)
        cloud.publish(staging, b"sentinel")
        assert wait_for(lambda: box1.saw(staging, b"sentinel"), 10, "box1 to get the sentinel")
        assert wait_for(lambda: cloud.saw(own_status, b"genuine"), 10, "the cloud to get box1's status")
        seen_by_cloud = {t: p for t, p in cloud.got}
        assert seen_by_cloud.get(Topics.device("park1", "box1", Kind.STATUS)) == b"genuine"
        assert Topics.device("park1", "box2", Kind.STATUS) not in seen_by_cloud
        box1_topics = [t for t, _ in box1.got]
        assert Topics.release("staging") in box1_topics
        assert Topics.release("production") not in box1_topics
        assert Topics.device("park1", "box2", Kind.UPDATE_RESPONSE) not in box1_topics
        # box1 cannot overwrite the retained release notice
        box1.publish(Topics.release("staging"), b"fake notice", retain=True)
        box1.publish(own_status, b"sentinel")
        assert wait_for(lambda: cloud.saw(own_status, b"sentinel"), 10, "the cloud to get the sentinel")
        assert (Topics.release("staging"), b"fake notice") not in cloud.got
        # every box reads the cloud's retained capabilities, and no box can forge them
        cloud.publish(Topics.CAPABILITIES, b"caps", retain=True)
        box1.publish(Topics.CAPABILITIES, b"forged caps", retain=True)
        box1.subscribe(Topics.CAPABILITIES)
        assert wait_for(lambda: box1.saw(Topics.CAPABILITIES, b"caps"), 10, "box1 to read the capabilities")
        box1.publish(own_status, b"sentinel2")
        assert wait_for(lambda: cloud.saw(own_status, b"sentinel2"), 10, "the cloud to get sentinel2")
        assert (Topics.CAPABILITIES, b"forged caps") not in cloud.got
    finally:
        cloud.close()
        box1.close()


def test_wrong_password_and_anonymous_are_refused(acl_broker: tuple[EmbeddedBroker, dict[str, str]]) -> None:
    broker, pw = acl_broker
    bad = Client(broker.port, "box1", pw["box2"])
    anon = Client(broker.port, None, None)
    try:
        assert bad.connect_rc is not None and bad.connect_rc.is_failure
        assert anon.connect_rc is not None and anon.connect_rc.is_failure
    finally:
        bad.close()
        anon.close()


def test_revoked_device_can_no_longer_connect(
    tmp_path: Path, acl_broker: tuple[EmbeddedBroker, dict[str, str]]
) -> None:
    broker, pw = acl_broker
    ch = ReleaseChannel(cloud_config(tmp_path / "cloud", mqtt_cfg(broker.port)))
    ch.revoke_device("park1", "box2", "ops", "box stolen")
    broker.restart()  # production: reload with SIGHUP
    c = Client(broker.port, "box2", pw["box2"])
    try:
        assert c.connect_rc is not None and c.connect_rc.is_failure
    finally:
        c.close()
    audit = [e.action for e in ch.audit.entries()]
    assert "device-revoke" in audit


def test_shipped_acl_example_is_what_render_writes() -> None:
    from cloud.release.brokerauth import DeviceAccount, render_acl

    example = Path(__file__).resolve().parent.parent / "provisioning" / "mosquitto" / "acl.example"

    def rules(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]

    rendered = render_acl([DeviceAccount("park1", "box1", "staging", "box1", "x")], "parkwatch-cloud")
    assert rules(example.read_text()) == rules(rendered)
