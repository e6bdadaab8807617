"""The daemon in-process against the real Mosquitto: predictions, telemetry, status, model swap."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge.daemon import Daemon
from edge.model import load_model
from shared.broker import EmbeddedBroker
from shared.protocol import DeviceStatus, ModelState, PredictionBatch, Telemetry, decode
from shared.protocol.topics import ROOT
from tests.edge_fixtures import edge_config, make_tiny_onnx, make_tiny_package


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


class Collector:
    """A cloud-side subscriber: decodes every message with the shared protocol."""

    def __init__(self, broker: EmbeddedBroker, client_id: str = "test-cloud", clean: bool = True) -> None:
        self.messages: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port, clean_start=clean)
        c.loop_start()
        self.client = c
        assert self.ready.wait(10)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"{ROOT}/dev/#", qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        self.ready.set()  # on SUBACK: anything published from now on reaches us

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        _, obj = decode(msg.topic, msg.payload)
        with self.lock:
            self.messages.append((msg.topic, obj))

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [m for _, m in self.messages if isinstance(m, kind)]

    def seqs(self) -> list[int]:
        return [p.seq for b in self.of(PredictionBatch) for p in b.predictions]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector(broker: EmbeddedBroker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()


def folder_cam(pets_sample: Path, fps: float | None = 10, cam_id: str = "c1") -> dict[str, Any]:
    return {"id": cam_id, "kind": "folder", "url": str(pets_sample), "fps": fps}


def test_predictions_telemetry_status_flow(
    tmp_path: Path, broker: EmbeddedBroker, collector: Collector, pets_sample: Path
) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", version="v1")
    cfg = edge_config(tmp_path, broker, [folder_cam(pets_sample, 10), folder_cam(pets_sample, 5, "c2")], pkg)
    with Daemon(cfg):
        assert wait_for(lambda: len(collector.seqs()) >= 20, 15)
        assert wait_for(lambda: bool(collector.of(Telemetry)), 10)
        batch = collector.of(PredictionBatch)[0]
        assert (batch.site, batch.device) == ("bcn", "box1")
        p = batch.predictions[0]
        assert p.model_version == "v1" and p.camera in ("c1", "c2")
        assert set(p.probs) == {"cat", "dog"}
        assert (p.label == "abstain") == p.abstain == (p.confidence < 0.6)
        tel = collector.of(Telemetry)[-1]
        assert tel.cameras["c1"].state == "streaming"
        assert tel.model_version == "v1" and tel.cpu_per_core and tel.uptime_system_s > 0
        assert set(tel.latency_ms) == {"p50", "p95", "p99"}
        status = collector.of(DeviceStatus)
        assert status and status[0].state == "online"
        states = collector.of(ModelState)
        assert states and states[-1].state == "active" and states[-1].active_version == "v1"
    # graceful stop: everything acknowledged, offline published (not the last-will). The offline
    # status follows the last batch on the same connection, so once it is here the batches are too.
    assert wait_for(lambda: collector.of(DeviceStatus)[-1].state == "offline", 5)
    seqs = collector.seqs()
    assert collector.of(DeviceStatus)[-1].reason == "shutdown"
    assert seqs == sorted(set(seqs)) and seqs[0] == 1 and seqs[-1] == len(seqs)
    from edge.outbox import Outbox

    ob = Outbox(cfg.outbox_path)
    assert ob.backlog == 0 and ob.last_seq == seqs[-1]


def test_offline_broker_keeps_predictions_until_it_returns(tmp_path: Path, pets_sample: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "b")
    cfg = edge_config(tmp_path, broker, [folder_cam(pets_sample, 20)], make_tiny_package(tmp_path / "p"))
    with Daemon(cfg) as d:  # the broker is not running yet
        assert wait_for(lambda: d.outbox is not None and d.outbox.backlog >= 20, 10)
        assert not d.mqtt.connected
        broker.start()
        try:
            col = Collector(broker)
            assert wait_for(lambda: d.mqtt.connected, 15)
            assert wait_for(lambda: d.outbox is not None and d.outbox.backlog < 20, 15)
            assert wait_for(lambda: len(col.seqs()) >= 20, 10)
            assert col.seqs()[:5] == [1, 2, 3, 4, 5]
            col.close()
        finally:
            d.stop()
            broker.stop()


def test_model_swap_lands_between_batches_and_bad_model_is_refused(
    tmp_path: Path, broker: EmbeddedBroker, collector: Collector, pets_sample: Path
) -> None:
    cfg = edge_config(tmp_path, broker, [folder_cam(pets_sample, 20)], make_tiny_package(tmp_path / "a", "a"))
    with Daemon(cfg) as d:
        assert wait_for(lambda: len(collector.seqs()) >= 5, 10)
        from edge.errors import ModelMetadataError

        with pytest.raises(ModelMetadataError):
            d.load_model(make_tiny_onnx(tmp_path / "nometa.onnx", with_metadata=False))
        assert d.model_slot.current is not None and d.model_slot.current.version == "a"  # untouched
        new = load_model(make_tiny_package(tmp_path / "b", "b", seed=5), cfg.inference)
        old = d.model_slot.swap(new)
        assert old is not None and old.version == "a"
        d.report_model_state(
            ModelState(
                device="box1",
                site="bcn",
                state="active",
                version="b",
                active_version="b",
                previous_version="a",
            )
        )

        def versions() -> list[str]:
            return [p.model_version for b in collector.of(PredictionBatch) for p in b.predictions]

        assert wait_for(lambda: versions()[-5:] == ["b"] * 5, 15)
        seen = versions()
        first_b = seen.index("b")
        assert set(seen[:first_b]) == {"a"} and set(seen[first_b:]) == {"b"}
        assert wait_for(lambda: collector.of(ModelState)[-1].active_version == "b", 5)
        assert d.snapshot()["previous_model"] == "a"


def test_initial_model_without_metadata_keeps_daemon_up(
    tmp_path: Path, broker: EmbeddedBroker, collector: Collector, pets_sample: Path
) -> None:
    bad = make_tiny_onnx(tmp_path / "bad.onnx", with_metadata=False)
    cfg = edge_config(tmp_path, broker, [folder_cam(pets_sample, 20)], bad)
    with Daemon(cfg) as d:
        assert wait_for(lambda: bool(collector.of(ModelState)), 10)
        st = collector.of(ModelState)[-1]
        assert st.state == "failed" and "parkwatch.labels" in (st.reason or "")
        assert wait_for(lambda: d.engine is not None and d.engine.skipped_no_model > 0, 5)
        assert d.healthy() and d.outbox is not None and d.outbox.backlog == 0
        assert any("initial model refused" in e["message"] for e in d.snapshot()["errors"])


def test_full_disk_under_the_outbox_is_counted_and_the_daemon_stays_up(
    tmp_path: Path, broker: EmbeddedBroker, collector: Collector, pets_sample: Path
) -> None:
    # No broker for the device (port 1), so the outbox only fills; SQLite's size cap makes it "full".
    cfg = edge_config(
        tmp_path,
        None,
        [folder_cam(pets_sample, None)],
        make_tiny_package(tmp_path / "p"),
        outbox={"max_db_mb": 0.08},
    )
    with Daemon(cfg) as d:
        assert wait_for(lambda: d.outbox is not None and d.outbox.write_errors > 0, 30)
        assert d.healthy()
        # The writer thread counts the predictions it lost just after the outbox refused them.
        assert wait_for(lambda: d.snapshot()["inference"]["lost_predictions"] > 0, 5)
        assert "full" in (d.snapshot()["outbox"]["last_error"] or "")
        tel = d.build_telemetry()
        assert tel.outbox_errors > 0
        assert tel.lost_predictions > 0  # sent to the cloud, whose health raises predictions_lost
        outbox = d.outbox
        assert outbox is not None and outbox.backlog > 0
    n = outbox.backlog  # after the stop's last commit; the count outlives the closed connection
    # what was committed before the disk filled is intact
    from edge.outbox import Outbox

    assert Outbox(cfg.outbox_path).backlog == n


def test_motion_gating_skips_an_unchanged_scene(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path
) -> None:
    still = tmp_path / "still"
    still.mkdir()
    src = sorted((pets_sample / "cat").glob("*.jpg"))[0]
    (still / "a.jpg").write_bytes(src.read_bytes())
    cfg = edge_config(
        tmp_path,
        broker,
        [{"id": "s", "kind": "folder", "url": str(still), "fps": 20}],
        make_tiny_package(tmp_path / "p"),
        inference={"motion_gating": True},
    )
    with Daemon(cfg) as d:
        assert wait_for(lambda: d.engine is not None and d.engine.skipped_static >= 10, 10)
        assert d.engine is not None and d.engine.classified == 1
        assert json.dumps(d.snapshot(), default=str)


def test_low_confidence_snapshots_are_kept_and_bounded(tmp_path: Path, pets_sample: Path) -> None:
    cfg = edge_config(
        tmp_path,
        None,  # no broker: kept on the box; upload_allowed is false by default anyway
        [folder_cam(pets_sample, 30)],
        make_tiny_package(tmp_path / "p"),
        snapshots={"enabled": True, "max_confidence": 1.0, "max_count": 5},
    )
    with Daemon(cfg) as d:
        assert wait_for(lambda: d.engine is not None and d.engine.classified >= 12, 10)
        assert d.engine is not None
        recent = list(d.engine.recent)
    folder = cfg.state_dir / "snapshots"
    assert recent[0]["snapshot"] and (folder / f"{recent[0]['snapshot']}.jpg").exists()
    from edge.snapshots import SnapshotStore

    SnapshotStore(cfg.snapshots, folder).prune()
    assert len(list(folder.glob("*.jpg"))) == 5


def test_frames_ready_together_are_one_batch_through_one_session_run(
    tmp_path: Path, pets_sample: Path
) -> None:
    import threading as th

    import cv2
    import numpy as np

    from edge.cameras import Camera, Frame
    from edge.config import CameraConfig, InferenceConfig, IntegrityConfig
    from edge.events import RecentErrors
    from edge.inference import InferenceEngine
    from edge.model import ModelSlot
    from edge.outbox import Outbox

    model = load_model(make_tiny_package(tmp_path / "p", "b1"), InferenceConfig(threads=1))
    calls: list[int] = []
    real_run = model.run_full

    def counting_run(batch: Any) -> Any:
        calls.append(batch.shape[0])
        return real_run(batch)

    model.run_full = counting_run  # type: ignore[method-assign]
    cams = [Camera(CameraConfig(id=f"c{i}", kind="folder", url=str(pets_sample))) for i in range(3)]
    outbox = Outbox(tmp_path / "o.db")
    engine = InferenceEngine(
        cams,
        ModelSlot(model),
        outbox,
        InferenceConfig(max_batch=8),
        IntegrityConfig(),
        th.Event(),
        RecentErrors(),
    )
    engine.writer.start()
    imgs = [
        np.asarray(cv2.imread(str(p)), dtype=np.uint8)
        for p in sorted((pets_sample / "dog").glob("*.jpg"))[:3]
    ]
    frames = [Frame(f"c{i}", img, time.time(), time.monotonic(), 0) for i, img in enumerate(imgs)]
    preds = engine.process(frames)
    engine.writer.stop()
    assert calls == [3] and engine.batches == 1
    assert [p["camera"] for p in preds] == ["c0", "c1", "c2"]
    assert [p["seq"] for p in preds] == [1, 2, 3] and outbox.backlog == 3


def test_snapshots_are_uploaded_only_when_allowed(
    tmp_path: Path, broker: EmbeddedBroker, collector: Collector, pets_sample: Path
) -> None:
    import base64

    from shared.protocol import Snapshot

    pkg = make_tiny_package(tmp_path / "p")
    for allowed in (False, True):
        cfg = edge_config(
            tmp_path / str(allowed),
            broker,
            [folder_cam(pets_sample, 20)],
            pkg,
            snapshots={"enabled": True, "max_confidence": 1.0, "upload_allowed": allowed},
        )
        with Daemon(cfg) as d:
            assert wait_for(lambda: d.engine is not None and d.engine.classified >= 8, 10)
            if allowed:
                assert wait_for(lambda: len(collector.of(Snapshot)) >= 3, 10)
            else:
                time.sleep(1)
                assert collector.of(Snapshot) == []
    snap = collector.of(Snapshot)[0]
    assert snap.site == "bcn" and snap.camera == "c1"
    jpeg = base64.b64decode(snap.jpeg)
    assert jpeg.startswith(b"\xff\xd8")
    assert (tmp_path / "True" / "state" / "snapshots" / f"{snap.id}.jpg").read_bytes() == jpeg


def test_a_camera_that_never_connects_is_listed_in_errors_and_counts_attempts(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    from shared.broker import free_port

    url = f"rtsp://user:secret@127.0.0.1:{free_port()}/x"
    cam = {"id": "dead", "kind": "rtsp", "url": url, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5}
    cfg = edge_config(tmp_path, broker, [cam], make_tiny_package(tmp_path / "p"))
    with Daemon(cfg) as d:
        assert wait_for(lambda: d.cameras[0].reconnects >= 2, 30)
        errors = d.snapshot()["errors"]
        assert any(e["source"] == "camera dead" for e in errors), errors
        assert "secret" not in json.dumps(errors), "credentials must not reach the status page"
        assert d.healthy(), "a dead camera never stops the daemon"


def test_two_daemons_with_one_device_id_are_told_why_they_keep_dropping(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    pkg = make_tiny_package(tmp_path / "p")
    a = edge_config(tmp_path / "a", broker, [], pkg)
    b = edge_config(tmp_path / "b", broker, [], pkg)
    with Daemon(a) as da, Daemon(b) as db:
        assert da.mqtt is not None and db.mqtt is not None
        assert wait_for(
            lambda: any("same [device] id" in (d.mqtt.last_error or "") for d in (da, db)),
            60,
        )


def _high_detail_frame(pets_sample: Path, width: int, height: int) -> Any:
    """Real photos tiled edge to edge plus sensor noise: the kind of frame a 4K camera sends at
    dusk, whose JPEG at quality 90 is several times the snapshot message bound."""
    import cv2
    import numpy as np

    photos = sorted(pets_sample.glob("*/*.jpg"))[:24]
    tiles = [cv2.resize(np.asarray(cv2.imread(str(p)), dtype=np.uint8), (480, 360)) for p in photos]
    cols, rows = -(-width // 480), -(-height // 360)
    grid = np.vstack(
        [np.hstack([tiles[(r * cols + c) % len(tiles)] for c in range(cols)]) for r in range(rows)]
    )[:height, :width]
    noise = np.random.default_rng(0).normal(0, 18, grid.shape)
    return np.clip(grid + noise, 0, 255).astype(np.uint8)


def test_a_huge_snapshot_costs_no_prediction_and_is_sent_smaller(
    tmp_path: Path, broker: EmbeddedBroker, collector: Collector, pets_sample: Path
) -> None:
    """Issue 12 item 8: a high-detail 4K low-confidence frame used to fail the snapshot size
    check inside the batch, dropping every camera's predictions of that batch, uncounted."""
    import base64

    import cv2

    from shared.protocol import Snapshot
    from shared.protocol.messages import SNAPSHOT_B64_MAX

    max_jpeg = SNAPSHOT_B64_MAX // 4 * 3

    big = tmp_path / "big"
    big.mkdir()
    frame = _high_detail_frame(pets_sample, 3840, 2160)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and len(buf) > 3 * max_jpeg  # far over the bound at the old fixed quality
    (big / "frame.jpg").write_bytes(buf.tobytes())
    cfg = edge_config(
        tmp_path,
        broker,
        [{"id": "big", "kind": "folder", "url": str(big), "fps": 5}, folder_cam(pets_sample, 5, "small")],
        make_tiny_package(tmp_path / "p"),
        snapshots={"enabled": True, "max_confidence": 1.0, "upload_allowed": True},
        inference={"max_batch": 8},
    )
    with Daemon(cfg) as d:
        cams = lambda: {p.camera for b in collector.of(PredictionBatch) for p in b.predictions}  # noqa: E731
        assert wait_for(lambda: cams() == {"big", "small"}, 30), f"predictions only from {cams()}"
        assert wait_for(lambda: any(s.camera == "big" for s in collector.of(Snapshot)), 20)
        assert d.engine is not None and d.engine.lost_predictions == 0
        assert d.engine.snapshots is not None and d.engine.snapshots.reduced >= 1
        assert d.engine.inference_errors == 0
    snap = next(s for s in collector.of(Snapshot) if s.camera == "big")
    jpeg = base64.b64decode(snap.jpeg)
    assert len(jpeg) <= max_jpeg
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
