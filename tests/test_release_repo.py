"""The TUF repository: thresholds, immutability, freshness, key separation, and the responder's paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError

from cloud.release.channel import ReleaseChannel
from cloud.release.config import ReleaseConfig
from cloud.release.errors import RepositoryError
from cloud.release.keys import ROLES, KeyStore
from cloud.release.repo import TufRepository
from cloud.release.responder import Responder, answer, resolve
from edge.mqttlink import MqttLink
from edge.updater.fetcher import METADATA_URL, MqttFetcher
from edge.updater.transport import UpdateChannel
from shared.broker import EmbeddedBroker
from shared.protocol import UpdateRequest
from tests.release_support import cloud_config, mqtt_cfg


def repo_with(tmp_path: Path, **cfg: object) -> TufRepository:
    rc = ReleaseConfig(**cfg)
    ks = KeyStore(tmp_path / "keys")
    counts = {"root": rc.root_threshold, "approver": rc.targets_threshold}
    for r in ROLES:
        ks.generate(r, counts.get(r, 1))
    repo = TufRepository(tmp_path / "repo", ks, rc)
    repo.init()
    return repo


def blob(tmp_path: Path, name: str = "pkg.tar", size: int = 50_000) -> Path:
    f = tmp_path / name
    f.write_bytes(os.urandom(size))
    return f


def test_approval_threshold_needs_every_approver_key(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, targets_threshold=2)
    assert repo.root().signed.roles["targets"].threshold == 2
    repo.add_build("1.0.0", blob(tmp_path))
    repo.set_approval("1.0.0", ["staging"])
    assert len(repo.role("targets").signatures) == 2
    repo.keys.retire(repo.keys.load("approver")[1])
    with pytest.raises(RepositoryError, match="needs 2 signatures"):
        repo.set_approval("1.0.0", ["staging", "production"])
    assert repo.approvals() == {"1.0.0": ["staging"]}  # nothing changed


def test_versions_are_immutable_and_rollout_needs_approval(tmp_path: Path) -> None:
    repo = repo_with(tmp_path)
    f = blob(tmp_path)
    repo.add_build("1.0.0", f)
    repo.add_build("1.0.0", f)  # same bytes: a no-op
    with pytest.raises(RepositoryError, match="immutable"):
        repo.add_build("1.0.0", blob(tmp_path, "other.tar"))
    with pytest.raises(RepositoryError, match="not approved for production"):
        repo.set_group("production", "1.0.0", "production")
    with pytest.raises(RepositoryError, match="no published build"):
        repo.set_approval("9.9.9", ["staging"])
    with pytest.raises(RepositoryError, match="already holds"):
        repo.init()


def test_timestamp_is_re_signed_before_it_expires(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, timestamp_expiry_s=3600)
    v = repo.timestamp().signed.version
    assert repo.refresh() is False
    repo.cfg = ReleaseConfig(timestamp_expiry_s=3 * 3600)  # now less than half the lifetime is left
    assert repo.refresh() is True
    assert repo.timestamp().signed.version == v + 1


def test_keys_init_refuses_to_overwrite(tmp_path: Path) -> None:
    ch = ReleaseChannel(cloud_config(tmp_path / "cloud", mqtt_cfg(1)), notify=lambda *a: True)
    out = ch.keys_init("ops", allow_approver_key_on_server=True)
    assert len(out.created) == 6 and Path(out.trusted_root).exists()
    with pytest.raises(RepositoryError, match="refusing to overwrite"):
        ch.keys_init("ops", allow_approver_key_on_server=True)


def test_responder_serves_only_repository_files(tmp_path: Path) -> None:
    repo = repo_with(tmp_path)
    assert resolve(repo.dir, "metadata/1.root.json") == repo.metadata_dir / "1.root.json"
    for bad in (
        "metadata/../keys/root-1.pem",
        "metadata/sub/x.json",
        "keys/root-1.pem",
        "targets/../../etc/passwd",
        "targets/x/notahash.model.tar",
    ):
        assert resolve(repo.dir, bad) is None, bad
    resp = answer(repo.dir, UpdateRequest(path="metadata/1.root.json", offset=10, length=20), 1024)
    whole = (repo.metadata_dir / "1.root.json").read_bytes()
    import base64

    assert resp.status == "ok" and resp.total == len(whole) and base64.b64decode(resp.data) == whole[10:30]
    assert answer(repo.dir, UpdateRequest(path="metadata/99.root.json"), 1024).status == "not_found"
    assert answer(repo.dir, UpdateRequest(path="metadata/1.root.json", offset=10**6), 1024).status == "error"


def test_fetcher_turns_not_found_into_404_over_the_real_broker(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    import paho.mqtt.client as mqtt

    from shared.mqtt import make_client

    repo = repo_with(tmp_path)
    responder = Responder(repo.dir, 4096)
    cloud = make_client(mqtt_cfg(broker.port), "responder-test")
    responder.attach(cloud)

    def subscribe(c: mqtt.Client, *a: object) -> None:
        for t in responder.subscriptions():
            c.subscribe(t, qos=1)

    cloud.on_connect = subscribe
    subbed = threading.Event()  # so no request goes out before the responder listens (a retry would count)
    cloud.on_subscribe = lambda *a: subbed.set()
    cloud.connect("127.0.0.1", broker.port)
    cloud.loop_start()
    assert subbed.wait(10), "the responder got no SUBACK"
    link = MqttLink(mqtt_cfg(broker.port), "park1", "box1", "staging")
    link.start()
    try:
        assert link.wait_connected(10)
        channel = UpdateChannel(link, "park1", "box1")
        fetcher = MqttFetcher(channel, 512, 5.0, 2)
        data = fetcher.download_bytes(METADATA_URL + "1.root.json", 1_000_000)
        assert data == (repo.metadata_dir / "1.root.json").read_bytes()
        assert len(channel.requests) == -(-len(data) // 512)  # chunk by chunk, by offset
        with pytest.raises(DownloadHTTPError) as e:
            fetcher.download_bytes(METADATA_URL + "2.root.json", 1_000_000)
        assert e.value.status_code == 404
        assert responder.served >= 2
        # a request that asks for the answer on someone else's topic is dropped
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from shared.protocol import Kind, Topics, encode

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = Topics.device("park1", "box2", Kind.UPDATE_RESPONSE)
        props.CorrelationData = b"x"
        before = responder.rejected
        link.client.publish(
            Topics.device("park1", "box1", Kind.UPDATE_REQUEST),
            encode(UpdateRequest(path="metadata/1.root.json")),
            qos=1,
            properties=props,
        )
        from tests.release_support import wait_for

        wait_for(lambda: responder.rejected > before, 5, "the reflected request to be dropped")
    finally:
        link.stop()
        cloud.disconnect()
        cloud.loop_stop()
        responder.stop()


def test_approver_keys_can_live_apart_from_the_others(tmp_path: Path) -> None:
    cfg = cloud_config(
        tmp_path / "cloud", mqtt_cfg(1), approver_keys_dir=tmp_path / "usb-stick", targets_threshold=2
    )
    ch = ReleaseChannel(cfg, notify=lambda *a: True)
    ch.keys_init("ops", allow_approver_key_on_server=True)
    assert sorted(p.name for p in (tmp_path / "usb-stick").glob("*.pem")) == [
        "approver-1.pem",
        "approver-2.pem",
    ]
    assert not list(cfg.paths.keys_dir.glob("approver-*"))
    assert len(ch.keys_list()["approver"]) == 2


def test_cloud_serve_keeps_the_timestamp_fresh(tmp_path: Path, broker: EmbeddedBroker) -> None:
    from datetime import UTC, datetime

    from cloud.release.server import ReleaseService
    from tests.release_support import wait_for

    svc = ReleaseService(cloud_config(tmp_path / "cloud", mqtt_cfg(broker.port), refresh_check_s=0.2))
    svc.start()
    try:
        ch = svc.channel
        assert ch is not None and svc.wait_connected()
        ch.keys_init("ops", allow_approver_key_on_server=True)
        stale = ch.repo.write_expired_timestamp().signed.version
        wait_for(lambda: ch.repo.timestamp().signed.version > stale, 10, "a re-signed timestamp")
        assert ch.repo.timestamp().signed.expires > datetime.now(UTC)
    finally:
        svc.stop()
