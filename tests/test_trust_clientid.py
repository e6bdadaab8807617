"""Client ids bound to credentials, with the real Mosquitto, the rendered password/ACL files and
the box-facing listener configured by ``provisioning/mosquitto/device-listener.conf``.

Before the fix a box holding valid credentials for itself could connect with the cloud ingest's
fixed client id and clean_start=false: the broker handed it the ingest's persistent session, so the
predictions queued for the ingest (already PUBACKed to the boxes) were gone. It could also take
another box's client id and knock that box offline (its last-will published).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.config import CloudConfig, install_id
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from cloud.release.channel import ReleaseChannel
from cloud.release.errors import ProvisioningError
from shared.broker import EmbeddedBroker, device_listener_conf
from shared.protocol import DeviceStatus, Kind, Topics, decode
from tests.release_support import cloud_config, mqtt_cfg, wait_for
from tests.simdevice import SimDevice

ROOT = Path(__file__).resolve().parent.parent


class Raw:
    """A bare MQTT 5 client: records CONNACK flags, messages and disconnects."""

    def __init__(self, port: int, user: str, password: str, client_id: str, clean_start: bool) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.session_present: bool | None = None
        self.refused: Any = None
        self.disconnects = 0
        self._ok = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=client_id
        )
        self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        self.c.loop_start()
        assert self._ok.wait(10), f"{user} got no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any = None) -> None:
        self.session_present = bool(flags.session_present)
        self.refused = rc if rc.is_failure else None
        self._ok.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.disconnects += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def bound_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, CloudConfig, dict[str, str]]]:
    secrets = tmp_path / "secrets"
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1883, "parkwatch-cloud", secrets / "cloud.secret"))
    ch = ReleaseChannel(cfg)
    ch.cloud_account(secrets / "cloud.secret", "ops")
    ch.provision_device("park1", "box1", "staging", secrets / "box1.secret", "ops")
    files = ch.provision_device("park1", "box2", "production", secrets / "box2.secret", "ops")
    ch.registry.close()
    pw = {n: (secrets / f"{n}.secret").read_text().strip() for n in ("cloud", "box1", "box2")}
    b = EmbeddedBroker(
        tmp_path / "broker",
        allow_anonymous=False,
        extra_conf=f"password_file {files.passwd}\nacl_file {files.acl}\n",
        device_listener=True,
    )
    b.start()
    try:
        data = cfg.model_dump()
        data["mqtt"]["port"] = b.port
        yield b, CloudConfig.model_validate(data), pw
    finally:
        b.stop()


def test_cloud_client_ids_are_unguessable_and_kept_per_install(tmp_path: Path) -> None:
    a = CloudConfig(data_dir=tmp_path / "a")
    b = CloudConfig(data_dir=tmp_path / "b")
    ids = {role: a.client_id(role) for role in ("ingest", "release", "alerts")}
    assert re.fullmatch(r"parkwatch-cloud-ingest-[0-9a-f]{16}", ids["ingest"])
    assert ids["ingest"] != b.client_id("ingest")  # another install, another id
    assert CloudConfig(data_dir=tmp_path / "a").client_id("ingest") == ids["ingest"]  # persisted
    assert (tmp_path / "a" / "install-id").read_text().strip() == install_id(tmp_path / "a")
    (tmp_path / "a" / "install-id").write_text("parkwatch\n")
    with pytest.raises(ValueError, match="not an install id"):
        install_id(tmp_path / "a")


def test_a_box_cannot_take_the_ingest_session(
    bound_broker: tuple[EmbeddedBroker, CloudConfig, dict[str, str]],
) -> None:
    broker, cfg, pw = bound_broker
    assert broker.device_port is not None
    ing = FleetIngest(cfg)  # default client id: parkwatch-cloud-ingest-<install id>
    ing.start()
    assert ing.wait_connected(15), "ingest did not connect"
    ing.stop()  # away, its persistent session keeps queueing
    box1 = SimDevice(
        "127.0.0.1", broker.device_port, site="park1", device="box1", username="box1", password=pw["box1"]
    ).connect()
    box1.predict(20)
    box1.flush()  # PUBACKed: box1's outbox would delete them now
    thief = Raw(broker.device_port, "box2", pw["box2"], ing.client_id, clean_start=False)
    try:
        assert thief.refused is None
        assert thief.session_present is False, "the broker handed a box the ingest's session"
        ing2 = FleetIngest(cfg)
        assert ing2.client_id == ing.client_id
        ing2.start()
        try:
            store = FleetStore(cfg.paths.fleet_db)
            wait_for(lambda: store.prediction_count() == 20, 30, "all 20 queued predictions stored")
        finally:
            ing2.stop()
        # Had the thief resumed the session it would have been delivered the queue first.
        assert [t for t, _ in thief.got if t.endswith("/predictions")] == []
    finally:
        thief.close()
        box1.disconnect()


def test_a_box_cannot_knock_another_box_offline(
    bound_broker: tuple[EmbeddedBroker, CloudConfig, dict[str, str]],
) -> None:
    broker, _cfg, pw = bound_broker
    assert broker.device_port is not None
    watcher = Raw(broker.port, "parkwatch-cloud", pw["cloud"], "t-watcher", clean_start=True)
    watcher.c.subscribe(Topics.device("park1", "box1", Kind.STATUS), qos=1)
    box1 = Raw(broker.device_port, "box1", pw["box1"], "box1", clean_start=True)
    status_topic = Topics.device("park1", "box1", Kind.STATUS)
    try:
        # box2 asks for box1's client id (the one box1 connected with)
        thief = Raw(broker.device_port, "box2", pw["box2"], "box1", clean_start=True)
        try:
            assert thief.refused is None
            # box1 still has its connection: a QoS-1 publish is acknowledged on it, and the
            # cloud sees it; a takeover would have disconnected box1 before this PUBACK.
            info = box1.c.publish(status_topic, b'{"sentinel": true}', qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
            wait_for(lambda: any(p == b'{"sentinel": true}' for _, p in watcher.got), 10, "sentinel")
            assert box1.disconnects == 0, "box2 knocked box1 offline"
        finally:
            thief.close()
    finally:
        box1.close()
        watcher.close()


def test_last_will_of_a_box_is_not_published_by_another_box(
    bound_broker: tuple[EmbeddedBroker, CloudConfig, dict[str, str]],
) -> None:
    broker, _cfg, pw = bound_broker
    assert broker.device_port is not None
    watcher = Raw(broker.port, "parkwatch-cloud", pw["cloud"], "t-watcher2", clean_start=True)
    watcher.c.subscribe(Topics.device("park1", "box1", Kind.STATUS), qos=1)
    box1 = SimDevice(
        "127.0.0.1", broker.device_port, site="park1", device="box1", username="box1", password=pw["box1"]
    ).connect()
    online = Topics.device("park1", "box1", Kind.STATUS)
    try:
        wait_for(lambda: watcher.got, 10, "box1 online")
        thief = Raw(broker.device_port, "box2", pw["box2"], "sim-park1-box1", clean_start=True)
        thief.close()
        box1.status("online", reason=None)
        box1.flush()
        wait_for(lambda: len(watcher.got) >= 2, 10, "box1's second status")
        states = [decode(online, p)[1] for t, p in watcher.got if t == online]
        assert all(isinstance(s, DeviceStatus) and s.state == "online" for s in states), states
    finally:
        box1.disconnect()
        watcher.close()


def test_no_device_may_be_named_like_a_cloud_client(tmp_path: Path) -> None:
    ch = ReleaseChannel(cloud_config(tmp_path / "cloud", mqtt_cfg(1883)))
    try:
        with pytest.raises(ProvisioningError, match="parkwatch-cloud"):
            ch.provision_device("park1", "parkwatch-cloud-ingest-x", "staging", tmp_path / "s", "ops")
    finally:
        ch.registry.close()


def test_production_example_binds_box_client_ids() -> None:
    """The shipped production config carries the device-listener options on its TLS listener."""
    example = (ROOT / "provisioning" / "mosquitto" / "mosquitto.conf.example").read_text()
    tls_block = example.split("listener 8883", 1)[1].split("\nlistener ", 1)[0]
    wanted = [ln for ln in device_listener_conf().splitlines() if ln.strip() and not ln.startswith("#")]
    assert wanted and all(ln in tls_block.splitlines() for ln in wanted)
