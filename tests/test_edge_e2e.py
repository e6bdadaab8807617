"""The real model on real pictures through the whole daemon: an RTSP camera showing cats
(GStreamer server playing a clip made from sample photos) and a folder camera of dogs.

Uses the EfficientNet-Lite0 baseline package (``baseline_package`` fixture, cached build).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.daemon import Daemon
from shared.broker import EmbeddedBroker
from shared.protocol import PredictionBatch, decode
from shared.protocol.topics import ROOT
from tests.edge_fixtures import edge_config
from tests.rtsp_server import RtspServer, check_prerequisites, make_clip


@pytest.mark.slow
def test_baseline_model_classifies_rtsp_cats_and_folder_dogs(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path, baseline_package: Path
) -> None:
    problem = check_prerequisites()
    if problem:
        pytest.fail(problem, pytrace=False)
    cats = sorted((pets_sample / "cat").glob("*.jpg"))[-8:]
    clip = make_clip(cats, tmp_path / "cats.mkv", seconds_per_image=1.0, fps=10)
    dogs = tmp_path / "dogs"
    dogs.mkdir()
    for p in sorted((pets_sample / "dog").glob("*.jpg"))[-8:]:
        (dogs / p.name).write_bytes(p.read_bytes())

    got: list[Any] = []
    lock = threading.Lock()
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        _, obj = decode(msg.topic, msg.payload)
        if isinstance(obj, PredictionBatch):
            with lock:
                got.extend(obj.predictions)

    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: (c.subscribe(f"{ROOT}/dev/+/+/predictions", qos=1), ready.set())  # type: ignore[assignment,func-returns-value]
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert ready.wait(10)
    with RtspServer(clip=clip) as server:
        cfg = edge_config(
            tmp_path,
            broker,
            [
                {"id": "rtsp-cats", "kind": "rtsp", "url": server.url, "fps": 3, "reconnect_initial_s": 0.5},
                {"id": "folder-dogs", "kind": "folder", "url": str(dogs), "fps": 3},
            ],
            baseline_package,
        )
        with Daemon(cfg) as d:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with lock:
                    per_cam = Counter(p.camera for p in got)
                if per_cam["rtsp-cats"] >= 12 and per_cam["folder-dogs"] >= 12:
                    break
                time.sleep(0.2)
            assert d.model_slot.current is not None
            version = d.model_slot.current.version
    sub.loop_stop()
    sub.disconnect()
    labels: dict[str, Counter[str]] = {"rtsp-cats": Counter(), "folder-dogs": Counter()}
    for p in got:
        labels[p.camera][p.label] += 1
        assert p.model_version == version
    for cam, want in (("rtsp-cats", "cat"), ("folder-dogs", "dog")):
        decided = sum(n for lab, n in labels[cam].items() if lab != "abstain")
        assert decided >= 8, labels
        assert labels[cam][want] / decided >= 0.75, labels
