"""The updater inside the real edge daemon: a camera keeps being classified across the swap.

Real Daemon (folder camera over the sample lake, outbox, publisher, MQTT link), real
``start_updater`` wiring, real ReleaseService and TUF. Predictions are numbered by the outbox, so
a lost frame would show up as a gap in the sequence numbers around the swap.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from cloud.release.server import ReleaseService
from edge.config import EdgeConfig
from edge.daemon import Daemon
from shared.broker import EmbeddedBroker
from shared.protocol import Topics
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import cloud_config, make_version, mqtt_cfg, register, version_of, wait_for


class Predictions:
    def __init__(self, port: int) -> None:
        self.items: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_connect = lambda cl, *a: cl.subscribe("parkwatch/v1/dev/+/+/predictions", qos=1)
        c.on_message = self._on
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c

    def _on(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            for p in json.loads(m.payload)["predictions"]:
                self.items.append((p["seq"], p["model_version"]))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_daemon_swaps_model_between_inferences_without_losing_frames(
    tmp_path: Path,
    broker: EmbeddedBroker,
    pets_sample: Path,
    baseline_package: Path,  # noqa: F811
) -> None:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(broker.port, client_id="release-svc"))
    svc = ReleaseService(cfg)
    svc.start()
    preds = Predictions(broker.port)
    daemon = None
    try:
        ch = svc.channel
        assert ch is not None and svc.wait_connected()
        ch.keys_init("ops", allow_approver_key_on_server=True)
        ch.provision_device("park1", "box1", "staging", tmp_path / "box1.secret", "ops")  # its group
        v1 = make_version(baseline_package, tmp_path / "pkgs", "1.0.0")
        v2 = make_version(baseline_package, tmp_path / "pkgs", "2.0.0")
        for v, p in (("1.0.0", v1), ("2.0.0", v2)):
            register(cfg, p, v)
            ch.approve(v, "staging", "qa", "ok")
        ch.rollout("1.0.0", "staging", "eng", "start")
        (tmp_path / "root.json").write_bytes(ch.repo.trusted_root_bytes())
        ecfg = EdgeConfig.model_validate(
            {
                "device": {"id": "box1", "site": "park1", "group": "staging"},
                "state_dir": str(tmp_path / "edge"),
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "cameras": [{"id": "c1", "kind": "folder", "url": str(pets_sample / "cat"), "fps": 8}],
                "inference": {"threads": 1},
                "model": {"initial": str(v1)},
                "status_page": {"enabled": False},
                "updater": {
                    "trusted_root": str(tmp_path / "root.json"),
                    "check_interval_s": 3600,
                    "warmup_runs": 1,
                },
            }
        )
        daemon = Daemon(ecfg).start()
        wait_for(lambda: len(preds.items) >= 5, 30, "predictions from 1.0.0")
        ch.rollout("2.0.0", "staging", "eng", "better")
        wait_for(lambda: version_of(daemon.model_slot.current) == "2.0.0", 120, "the daemon to run 2.0.0")
        wait_for(lambda: sum(1 for _, v in preds.items if v == "2.0.0") >= 5, 30, "predictions from 2.0.0")
        with preds.lock:
            seqs = sorted(s for s, _ in preds.items)
            versions = [v for _, v in sorted(preds.items)]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a prediction went missing around the swap"
        switch = versions.index("2.0.0")
        assert set(versions[:switch]) == {"1.0.0"} and set(versions[switch:]) == {"2.0.0"}
        assert daemon.model_state is not None and daemon.model_state.state == "active"
        wait_for(lambda: ch.status("staging").groups["staging"].active == 1, 20, "cloud sees it active")
    finally:
        if daemon is not None:
            daemon.stop()
        preds.close()
        svc.stop()


def test_garbage_on_the_release_topic_is_counted_and_never_stops_the_daemon(
    tmp_path: Path,
    broker: EmbeddedBroker,
    pets_sample: Path,
    baseline_package: Path,  # noqa: F811
) -> None:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(broker.port, client_id="release-svc"))
    svc = ReleaseService(cfg)
    svc.start()
    preds = Predictions(broker.port)
    daemon = None
    try:
        ch = svc.channel
        assert ch is not None and svc.wait_connected()
        ch.keys_init("ops", allow_approver_key_on_server=True)
        ch.provision_device("park1", "box1", "staging", tmp_path / "box1.secret", "ops")  # its group
        (tmp_path / "root.json").write_bytes(ch.repo.trusted_root_bytes())
        ecfg = EdgeConfig.model_validate(
            {
                "device": {"id": "box1", "site": "park1", "group": "staging"},
                "state_dir": str(tmp_path / "edge"),
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "cameras": [{"id": "c1", "kind": "folder", "url": str(pets_sample / "dog"), "fps": 8}],
                "inference": {"threads": 1},
                "model": {"initial": str(baseline_package)},
                "status_page": {"enabled": False},
                "updater": {"trusted_root": str(tmp_path / "root.json"), "check_interval_s": 3600},
            }
        )
        daemon = Daemon(ecfg).start()
        wait_for(lambda: len(preds.items) >= 3, 30, "first predictions")
        attacker = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        attacker.connect("127.0.0.1", broker.port)
        attacker.loop_start()
        topic = Topics.release("staging")
        for payload in (
            b"\xff not json",
            b'{"schema": 9, "group": "staging"}',
            b"{" + b" " * (3 << 20) + b"}",
        ):
            attacker.publish(topic, payload, qos=1).wait_for_publish(10)
        attacker.disconnect()
        attacker.loop_stop()
        expected = {"malformed": 1, "unsupported_schema": 1, "too_large": 1}
        wait_for(lambda: daemon.rejects.snapshot() == expected, 20, "the rejects counted by kind")
        before = len(preds.items)
        wait_for(lambda: len(preds.items) >= before + 3, 30, "predictions still flowing")
        assert daemon.build_telemetry().invalid_messages == expected
    finally:
        if daemon is not None:
            daemon.stop()
        preds.close()
        svc.stop()
