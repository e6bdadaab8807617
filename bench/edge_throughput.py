"""Edge daemon speed against its targets (issue 4), measured in one run on this machine.

Prints, each with its ratio against the limit:
  1. classifications/s of the daemon (`parkwatch edge run`, one 640x480 camera, no fps cap,
     regions off so every frame is one model input) vs raw ONNX Runtime ``session.run`` on the
     same model, thread count and batch shape (1)                            (target >= 0.9)
  2. frame-to-outbox and frame-to-PUBACK latency p50/p99 (printed; no limit set)
  3. daemon resident memory with the model loaded                            (target <= 300 MB)
  4. daemon CPU while every camera is offline                                 (target < 5 %)
  5. with regions on, one 1280x720 camera, no fps cap (issue 11): frames/s and regions/s for
     a still camera (one scene, motion gating on), a pet moving across a still background
     (motion boxes), and every frame a new scene (the whole frame tiled each time: the worst
     case); for the busiest, regions/s against raw ``session.run`` at the daemon's mean batch
     shape (printed; cropping the regions is the difference)

    .venv/bin/python bench/edge_throughput.py [--model PKG] [--threads N] [--seconds S] [--json]
        [--region-seconds S] [--scenes N]

Without --model it uses the EfficientNet-Lite0 baseline package (built once into the test cache).
The camera is an H.264 640x480 clip made from sample photos, read as a "file" camera: frames
are decoded on demand, so the camera never limits the rate and the daemon pipeline is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from edge.config import EdgeConfig, InferenceConfig  # noqa: E402
from edge.model import LoadedModel, load_model  # noqa: E402
from shared.broker import EmbeddedBroker  # noqa: E402
from shared.paths import sample_lake  # noqa: E402
from tests.edge_fixtures import write_toml  # noqa: E402
from tests.rtsp_server import free_port, make_clip  # noqa: E402

TOKEN = "bench-token"


def baseline_model() -> Path:
    from cloud.training.untrained import build_baseline_package
    from tests.fixtures_models import cached_package

    return cached_package("baseline", lambda out: build_baseline_package(out))


def raw_throughput(m: LoadedModel, seconds: float, batch: int = 1) -> tuple[float, int]:
    """Plain ``session.run`` on ``batch`` preprocessed 640x480 frames, back to back; returns
    model inputs (rows) per second and how many runs were made."""
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    x = m.preprocessor([frame] * batch)
    for _ in range(3):
        m.session.run(None, {m.input_name: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        m.session.run(None, {m.input_name: x})
        n += 1
    return n * batch / (time.perf_counter() - t0), n * batch


def region_scenes(tmp: Path, n_scenes: int) -> dict[str, tuple[Path, bool]]:
    """Folders of 1280x720 frames for the regions figures, built from the sample photos: a still
    scene (one frame, looped), a pet walking across a still background, and ``n_scenes``
    different scenes (pets anywhere, empty ones). Name -> (folder, motion gating on)."""
    import cv2

    from cloud.evaluation.scenes import FRAME, build_specs, cover, render
    from edge.preprocess import load_image

    def photos(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})

    lake = sample_lake()
    pets = [(p, lab) for lab in ("cat", "dog") for p in photos(lake / lab)]
    backgrounds = photos(lake.parent / "nopet-dev" / "none")
    specs = build_specs(
        pets, backgrounds, n_pet=n_scenes * 2 // 3, n_empty=n_scenes - n_scenes * 2 // 3, seed=3
    )
    specs = [s for s in specs if s.kind != "grey"]
    out: dict[str, tuple[Path, bool]] = {}
    still = tmp / "still"
    still.mkdir(parents=True)
    cv2.imwrite(str(still / "0.jpg"), render(specs[0]))
    out["still, gating on"] = (still, True)
    walk = tmp / "walk"
    walk.mkdir()
    bg = cover(load_image(backgrounds[0]), FRAME)
    pet = load_image(pets[0][0])
    ph = round(FRAME[1] * 0.3)
    pw = round(pet.shape[1] * ph / pet.shape[0])
    small = cv2.resize(pet, (pw, ph), interpolation=cv2.INTER_AREA)
    for i, x in enumerate(range(0, FRAME[0] - pw, 24)):
        f = bg.copy()
        f[400 : 400 + ph, x : x + pw] = small
        cv2.imwrite(str(walk / f"{i:04d}.jpg"), f)
    out["pet walking, gating on"] = (walk, True)
    busy = tmp / "busy"
    busy.mkdir()
    for i, spec in enumerate(specs):
        cv2.imwrite(str(busy / f"{i:04d}.jpg"), render(spec))
    out["new scene every frame"] = (busy, False)
    return out


def discarding_subscriber(port: int) -> Any:
    """A QoS 1 subscriber to every box's predictions and telemetry that drops what it gets."""
    import paho.mqtt.client as mqtt

    from shared.protocol import Topics

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sink", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    c.on_connect = lambda cl, *_: cl.subscribe([(Topics.ALL_PREDICTIONS, 1), (Topics.ALL_TELEMETRY, 1)])
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("the discarding subscriber could not subscribe to the bench broker")
    return c


def daemon_config(
    tmp: Path,
    broker: EmbeddedBroker,
    model: Path,
    threads: int,
    cameras: list[dict[str, Any]],
    inference: dict[str, Any] | None = None,
) -> Path:
    cfg = EdgeConfig.model_validate(
        {
            "device": {"id": "bench", "site": "lab"},
            "state_dir": str(tmp / "state"),
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "cameras": cameras,
            "model": {"initial": str(model)},
            "inference": {"threads": threads, **(inference or {"regions": {"enabled": False}})},
            "telemetry": {"interval_s": 5.0},
            "status_page": {"enabled": True, "port": 0, "token": {"env": "BENCH_TOKEN"}},
            "updater": {"enabled": False},
        }
    )
    return write_toml(tmp / f"edge-{len(list(tmp.glob('edge-*.toml')))}.toml", cfg)


class RunningDaemon:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        exe = REPO / ".venv" / "bin" / "parkwatch"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "shared.cli"]
        env = {**os.environ, "BENCH_TOKEN": TOKEN, "PARKWATCH_LOG_LEVEL": "INFO"}
        self.fh = log.open("w")
        self.proc = subprocess.Popen(
            [*cmd, "edge", "run", "--config", str(config)],
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 120
        self.url = ""
        while time.monotonic() < deadline and not self.url:
            m = re.search(r"status page on (http://\S+)", log.read_text())
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        if not self.url:
            raise SystemExit(f"daemon did not start:\n{log.read_text()[-3000:]}")

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/api/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.fh.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model package or .onnx (default: the baseline package)")
    ap.add_argument(
        "--threads", type=int, default=InferenceConfig().effective_threads, help="default: the daemon's auto"
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="total per side, split into rounds")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--region-seconds", type=float, default=20.0, help="per regions scenario")
    ap.add_argument("--scenes", type=int, default=60, help="different 1280x720 scenes for the busy camera")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    model = a.model or baseline_model()
    out: dict[str, Any] = {"model": str(model), "threads": a.threads, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="pw-bench-") as d:
        tmp = Path(d)
        photos = (
            sorted((sample_lake() / "cat").glob("*.jpg"))[:10]
            + sorted((sample_lake() / "dog").glob("*.jpg"))[:10]
        )
        clip = make_clip(photos, tmp / "clip.mp4", seconds_per_image=1.0, fps=15)
        broker = EmbeddedBroker(tmp / "broker").start()
        # A subscriber that discards, standing in for the cloud's ingest: with nobody subscribed
        # the broker answers PUBACK reason 16 ("no matching subscribers"), which the box rightly
        # treats as not delivered (issue 15 A1), so it would keep every row and back off.
        sink = discarding_subscriber(broker.port)
        try:
            # Other load on the box drifts; so raw and daemon windows alternate (the daemon is
            # frozen with SIGSTOP while raw runs) and the ratio is taken over the sums.
            bench_model = load_model(model, InferenceConfig(threads=a.threads))
            cam = {"id": "cam1", "kind": "file", "url": str(clip), "fps": 0, "loop": True}
            daemon = RunningDaemon(daemon_config(tmp, broker, model, a.threads, [cam]), tmp / "d1.log")
            raw_n = raw_t = d_n = d_t = 0.0
            ratios = []
            try:
                time.sleep(4)  # warm-up: sessions, first frames, broker connection
                time.sleep(10)  # an uninterrupted stretch for the latency figures
                s_lat = daemon.status()
                window = a.seconds / a.rounds
                cpu_busy = 0.0
                for _ in range(a.rounds):
                    daemon.proc.send_signal(signal.SIGSTOP)
                    r_ips, n = raw_throughput(bench_model, window)
                    raw_n, raw_t = raw_n + n, raw_t + n / r_ips
                    daemon.proc.send_signal(signal.SIGCONT)
                    time.sleep(1.0)  # let the pipeline refill after the pause
                    s0, t0, c0 = daemon.status(), time.monotonic(), daemon.ps.cpu_times()
                    time.sleep(window)
                    s1, t1, c1 = daemon.status(), time.monotonic(), daemon.ps.cpu_times()
                    k = s1["inference"]["classified"] - s0["inference"]["classified"]
                    d_n, d_t = d_n + k, d_t + (t1 - t0)
                    cpu_busy += (c1.user + c1.system) - (c0.user + c0.system)
                    ratios.append(round((k / (t1 - t0)) / r_ips, 3))
                rss = daemon.ps.memory_info().rss / 2**20
            finally:
                daemon.stop()
            raw_ips, ips = raw_n / raw_t, d_n / d_t
            out["raw_ips"] = round(raw_ips, 2)
            out["daemon_ips"] = round(ips, 2)
            out["throughput_ratio"] = round(ips / raw_ips, 3)
            out["round_ratios"] = ratios
            out["rss_mb"] = round(rss, 1)
            out["busy_cpu_percent"] = round(100 * cpu_busy / d_t, 1)
            out["frame_to_outbox_ms"] = s_lat["inference"]["latency_ms"]
            out["frame_to_puback_ms"] = s_lat["outbox"]["publish_latency_ms"]
            out["backlog_at_end"] = s1["outbox"]["backlog"]

            offline = [
                {"id": "dead-rtsp", "kind": "rtsp", "url": f"rtsp://127.0.0.1:{free_port()}/x"},
                {"id": "dead-mjpeg", "kind": "mjpeg", "url": f"http://127.0.0.1:{free_port()}/v.mjpg"},
            ]
            daemon = RunningDaemon(daemon_config(tmp, broker, model, a.threads, offline), tmp / "d2.log")
            try:
                time.sleep(3)
                c0, t0 = daemon.ps.cpu_times(), time.monotonic()
                time.sleep(a.idle_seconds)
                c1, t1 = daemon.ps.cpu_times(), time.monotonic()
                states = [c["state"] for c in daemon.status()["cameras"]]
                out["idle_rss_mb"] = round(daemon.ps.memory_info().rss / 2**20, 1)
            finally:
                daemon.stop()
            out["offline_camera_states"] = states
            out["idle_cpu_percent"] = round(
                100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0), 2
            )
            out["regions"] = regions_figures(tmp, broker, model, a, bench_model)
        finally:
            sink.loop_stop()
            sink.disconnect()
            broker.stop()

    if a.json:
        print(json.dumps(out, indent=2))
        return
    lat, ack = out["frame_to_outbox_ms"], out["frame_to_puback_ms"]
    print(f"model {out['model']}  threads {a.threads}  cores {out['cores']}")
    print(
        f"raw session.run          {out['raw_ips']:8.2f} img/s   "
        f"(alternating rounds, ratios {out['round_ratios']})"
    )
    print(
        f"daemon, 1 cam 640x480    {out['daemon_ips']:8.2f} img/s   ratio {out['throughput_ratio']:.3f} "
        f"(target >= 0.9: {'OK' if out['throughput_ratio'] >= 0.9 else 'MISSED'})"
    )
    print(f"frame -> result          p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms")
    print(f"frame -> broker PUBACK   p50 {ack.get('p50')} ms  p99 {ack.get('p99')} ms")
    print(
        f"daemon RSS (busy)        {out['rss_mb']:8.1f} MB     ratio {out['rss_mb'] / 300:.3f} of 300 MB "
        f"({'OK' if out['rss_mb'] <= 300 else 'MISSED'})"
    )
    print(
        f"daemon CPU, cams offline {out['idle_cpu_percent']:8.2f} %      "
        f"ratio {out['idle_cpu_percent'] / 5:.3f} of 5 % "
        f"({'OK' if out['idle_cpu_percent'] < 5 else 'MISSED'}; states {out['offline_camera_states']})"
    )
    print(
        f"(busy daemon CPU {out['busy_cpu_percent']} % of one core; backlog at end {out['backlog_at_end']})"
    )
    print("regions on, one 1280x720 camera, no fps cap:")
    for name, r in out["regions"].items():
        extra = (
            f"  vs raw session.run at batch {r['mean_batch']}: {r['raw_rows_per_s']} rows/s, ratio "
            f"{r['regions_ratio']}"
            if "regions_ratio" in r
            else ""
        )
        print(
            f"  {name:<24} {r['frames_per_s']:7.2f} frames/s  {r['regions_per_s']:7.2f} regions/s  "
            f"{r['regions_per_frame']:5.2f} regions per classified frame  "
            f"{r['skipped_share']:.2f} skipped (no motion)  CPU {r['cpu_percent']} %{extra}"
        )


def regions_figures(
    tmp: Path, broker: EmbeddedBroker, model: Path, a: argparse.Namespace, bench_model: LoadedModel
) -> dict[str, dict[str, Any]]:
    """Frames/s and regions/s with regions on, per scenario (see the module docstring)."""
    figures: dict[str, dict[str, Any]] = {}
    for i, (name, (folder, gating)) in enumerate(region_scenes(tmp / "scenes-root", a.scenes).items()):
        cam = {"id": f"wide{i}", "kind": "folder", "url": str(folder), "fps": 0, "loop": True}
        inference = {"motion_gating": gating}
        daemon = RunningDaemon(
            daemon_config(tmp, broker, model, a.threads, [cam], inference), tmp / f"r{i}.log"
        )
        try:
            time.sleep(4)
            s0, t0, c0 = daemon.status(), time.monotonic(), daemon.ps.cpu_times()
            time.sleep(a.region_seconds)
            s1, t1, c1 = daemon.status(), time.monotonic(), daemon.ps.cpu_times()
        finally:
            daemon.stop()
        i0, i1, dt = s0["inference"], s1["inference"], t1 - t0
        classified = i1["classified"] - i0["classified"]
        skipped = i1["skipped_static"] - i0["skipped_static"]
        regions = i1["regions_run"] - i0["regions_run"]
        runs = i1["batches"] - i0["batches"]
        r: dict[str, Any] = {
            "frames_per_s": round((classified + skipped) / dt, 2),
            "classified_per_s": round(classified / dt, 2),
            "regions_per_s": round(regions / dt, 2),
            "regions_per_frame": round(regions / classified, 2) if classified else 0.0,
            "skipped_share": round(skipped / (classified + skipped), 3) if classified + skipped else 0.0,
            "cpu_percent": round(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / dt, 1),
        }
        if not gating and runs:
            batch = max(1, round(regions / runs))
            raw_rows, _ = raw_throughput(bench_model, min(a.region_seconds, 10.0), batch)
            r.update(
                mean_batch=batch,
                raw_rows_per_s=round(raw_rows, 2),
                regions_ratio=round((regions / dt) / raw_rows, 3),
            )
        figures[name] = r
    return figures


if __name__ == "__main__":
    main()
