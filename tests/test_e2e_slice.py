"""The first end-to-end slice, for real: `parkwatch edge run` classifies an image-folder camera
with the cloud's ONNX model, and `parkwatch cloud serve` stores what arrives over a real broker.

Every prediction the edge issued (its outbox hands out seq 1..N and persists N) must be in the
cloud store exactly once, with the model version that made it, and telemetry must arrive too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cloud.fleet.store import FleetStore
from edge.outbox import Outbox
from shared.broker import EmbeddedBroker, free_port
from shared.modelpkg import MODEL_FILE, parse_metadata

PARKWATCH = str(Path(sys.executable).parent / "parkwatch")
IMAGES = 24


def _model_version(package: Path) -> str:
    import onnx

    props = {
        p.key: p.value for p in onnx.load(str(package / MODEL_FILE), load_external_data=False).metadata_props
    }
    return parse_metadata(props).model_version


def _camera_folder(lake: Path, dest: Path) -> Path:
    dest.mkdir()
    files = (
        sorted((lake / "cat").glob("*.jpg"))[: IMAGES // 2]
        + sorted((lake / "dog").glob("*.jpg"))[: IMAGES // 2]
    )
    for i, src in enumerate(files):
        (dest / f"{i:03d}.jpg").symlink_to(src)
    return dest


def _wait(predicate, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args!r} exited with {p.returncode} while waiting for {what}"
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_predictions_reach_the_cloud_store_exactly_once(
    tmp_path: Path, broker: EmbeddedBroker, baseline_package: Path, pets_sample: Path
) -> None:
    cloud_dir = tmp_path / "cloud"
    cloud_cfg = tmp_path / "cloud.toml"
    cloud_cfg.write_text(f'data_dir = "{cloud_dir}"\n[mqtt]\nport = {broker.port}\n')
    state = tmp_path / "edge"
    camera = _camera_folder(pets_sample, tmp_path / "camera")
    edge_cfg = tmp_path / "edge.toml"
    edge_cfg.write_text(
        f"""state_dir = "{state}"
[device]
id = "box-e2e"
site = "test-park"
group = "staging"
[mqtt]
port = {broker.port}
[[cameras]]
id = "gate"
kind = "folder"
url = "{camera}"
fps = 8.0
loop = false
[model]
initial = "{baseline_package}"
[telemetry]
interval_s = 1
[status_page]
enabled = true
port = {free_port()}
token = {{ env = "PARKWATCH_TEST_TOKEN" }}
[updater]
enabled = false
"""
    )
    env = {**os.environ, "PARKWATCH_TEST_TOKEN": "t0ken-for-tests"}
    logs = tmp_path / "logs"
    logs.mkdir()
    cloud = subprocess.Popen(
        [PARKWATCH, "cloud", "serve", "--config", str(cloud_cfg), "--only", "fleet-ingest"],
        stdout=(logs / "cloud.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    edge = subprocess.Popen(
        [PARKWATCH, "edge", "run", "--config", str(edge_cfg)],
        stdout=(logs / "edge.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs = [cloud, edge]
    try:
        fleet_db = cloud_dir / "fleet.db"

        def stored() -> int:
            if not fleet_db.exists():
                return 0
            with FleetStore(fleet_db) as s:
                return s.prediction_count("box-e2e")

        _wait(lambda: stored() >= IMAGES, 180, f"{IMAGES} predictions in the cloud store", procs)
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=60) == 0, (logs / "edge.log").read_text()[-3000:]
        procs.remove(edge)
        outbox = Outbox(state / "outbox.db")
        issued, backlog = outbox.last_seq, outbox.backlog
        outbox.close()
        assert issued == IMAGES, f"the edge classified {issued} frames of {IMAGES} images"
        assert backlog == 0, "the edge stopped with unacknowledged predictions"
        _wait(lambda: stored() >= issued, 30, "the last predictions", procs)
        with FleetStore(fleet_db) as s:
            rows = s.query(
                "SELECT seq, model_version, label, camera FROM predictions WHERE device = ?", ("box-e2e",)
            )
            gaps = s.gaps("box-e2e")
            telemetry = s.latest_telemetry("box-e2e")
        seqs = sorted(r["seq"] for r in rows)
        assert seqs == list(range(1, issued + 1)), "every issued seq exactly once"
        assert {r["model_version"] for r in rows} == {_model_version(baseline_package)}
        assert {r["camera"] for r in rows} == {"gate"}
        assert {r["label"] for r in rows} <= {"cat", "dog", "abstain"}
        assert sum(r["label"] == "cat" for r in rows) >= IMAGES // 4, "the model sees the cats"
        assert gaps == []
        assert telemetry is not None, "telemetry arrived"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
