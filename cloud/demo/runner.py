"""Runs the demo: broker, cloud side, one edge daemon, then the build → release loop.

The demo camera shows wide 1280x720 park scenes built at start from the sample photos: pets
pasted anywhere in no-pet backgrounds, empty scenes, and a night stretch in greyscale, so the box
publishes ``cat``, ``dog`` and ``none`` with the regions that held the pets, and ``ir`` at night.
The training lake is composed of symlinked label folders (``cat``, ``dog``, ``none``).

Everything runs through the same commands and configs an installation uses (``parkwatch cloud
serve``, ``parkwatch edge run``, ``parkwatch cloud ingest/train/approve/rollout``), so the demo is
also a smoke test of the real paths. The edge starts on the untrained grouped-ImageNet baseline,
so predictions reach the cloud store within a minute; meanwhile a real model is trained on the
sample lake (or reused from an earlier demo run), approved for staging by a demo approver and
rolled out to the demo box over the signed channel, and the box swaps it in without a restart.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.demo.configs import DEMO_DEVICE, DEMO_GROUP, DEMO_SITE, cloud_toml, edge_toml
from shared.broker import EmbeddedBroker, free_port
from shared.errors import ParkwatchError
from shared.paths import sample_lake

Say = Callable[[str], None]


class DemoError(ParkwatchError):
    pass


def _parkwatch() -> list[str]:
    exe = Path(sys.executable).parent / "parkwatch"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "shared.cli"]


def _child_env() -> dict[str, str]:
    """The demo's children log at INFO unless told otherwise: their logs are files, where
    progress bars do not draw, so a training run's stage lines are what build.log shows."""
    return {**os.environ, "PARKWATCH_LOG_LEVEL": os.environ.get("PARKWATCH_LOG_LEVEL", "INFO")}


def _run_json(args: list[str], log: Path, timeout: float = 1800) -> Any:
    with log.open("ab") as err:
        res = subprocess.run(
            [*_parkwatch(), *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout,
            check=False,
            env=_child_env(),
        )
    try:
        out = json.loads(res.stdout or b"{}")
    except json.JSONDecodeError as e:
        raise DemoError(f"parkwatch {' '.join(args)} printed no JSON (see {log})") from e
    if res.returncode != 0:
        error = out.get("error", "?") if isinstance(out, dict) else "?"
        raise DemoError(f"parkwatch {' '.join(args)} failed: {error} (see {log})")
    return out


SCENES_MARK = ".scenes-v1"
DAY_PETS, DAY_EMPTY, NIGHT_PETS, NIGHT_EMPTY = 48, 32, 12, 8


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def _camera_folder(lake: Path, nopet: Path, dest: Path) -> Path:
    """What the demo camera shows: wide 1280x720 park scenes, built here at start from the sample
    photos (never stored in the repository). Daytime first (pets pasted at 20-40 % of the frame
    height anywhere, and empty scenes), then a night stretch in greyscale (an IR camera); the
    folder camera plays them in name order and loops, so the box publishes cat, dog and none,
    with ``ir`` at night."""
    if (dest / SCENES_MARK).exists():
        return dest
    pets = [(p, label) for label in ("cat", "dog") for p in _images(lake / label)]
    backgrounds = _images(nopet)
    if not pets or not backgrounds:
        raise DemoError(
            f"the demo camera needs pet photos under {lake}/cat|dog and no-pet photos under {nopet}; "
            "set PARKWATCH_DATASETS to the folder holding pets-sample/ and nopet-dev/"
        )
    import cv2

    from cloud.evaluation.scenes import build_specs, render

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    day = build_specs(pets, backgrounds, DAY_PETS, DAY_EMPTY, seed=7, grey=False)
    night = [
        s
        for s in build_specs(pets, backgrounds, NIGHT_PETS, NIGHT_EMPTY, seed=8, grey=True)
        if s.kind != "pet"
    ]
    random.Random(7).shuffle(day)
    random.Random(8).shuffle(night)
    for stretch, specs in (("0-day", day), ("1-night", night)):
        for i, spec in enumerate(specs):
            img: Any = render(spec)
            if stretch == "1-night" and spec.kind == "empty":  # the pets' night copies are grey already
                img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            cv2.imwrite(
                str(dest / f"{stretch}-{i:03d}-{spec.label}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85]
            )
    (dest / SCENES_MARK).write_text(f"{len(day)} day and {len(night)} night scenes\n")
    return dest


def _demo_lake(pets: Path, nopet: Path, dest: Path) -> Path:
    """The training lake: ``cat``, ``dog`` and ``none`` label folders as symlinks to the sample
    sets, composed without copying a photo (ingest follows symlinked label folders)."""
    dest.mkdir(parents=True, exist_ok=True)
    links = {"cat": pets / "cat", "dog": pets / "dog", "none": nopet}
    for label, target in links.items():
        link = dest / label
        if target.is_dir() and not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return dest


class Demo:
    def __init__(self, workdir: Path, train: bool = True, say: Say = print) -> None:
        self.workdir = workdir.resolve()
        self.train = train
        self.say = say
        self.logs = self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker: EmbeddedBroker | None = None
        self.stop_event = threading.Event()
        self.loop_thread: threading.Thread | None = None
        self.loop_result: str = "not started"
        self.stored = 0

    # ---- set-up --------------------------------------------------------------------------------
    def prepare(self) -> None:
        lake = sample_lake()
        if not lake.is_dir():
            raise DemoError(
                f"sample data lake not found at {lake}; put ../shared/datasets beside the "
                "checkout or set PARKWATCH_DATASETS"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        nopet = lake.parent / "nopet-dev" / "none"
        self.lake = _demo_lake(lake, nopet, self.workdir / "lake")
        self.say("camera      building wide 1280x720 park scenes (day with and without pets, then night) ...")
        self.camera = _camera_folder(lake, nopet, self.workdir / "camera")
        self.broker = EmbeddedBroker(self.workdir / "broker").start()
        self.dashboard_port = free_port()
        self.status_port = free_port()
        self.cloud_cfg = self.workdir / "cloud.toml"
        self.cloud_cfg.write_text(cloud_toml(self.workdir / "cloud", self.broker.port, self.dashboard_port))
        self.say(f"broker      mosquitto on 127.0.0.1:{self.broker.port} (log {self.broker.log_path})")

        try:
            keys = _run_json(
                ["cloud", "keys", "status", "--config", str(self.cloud_cfg)], self.logs / "cli.log"
            )
        except DemoError:  # first run: no repository yet
            keys = _run_json(
                [
                    "cloud",
                    "keys",
                    "init",
                    "--as",
                    "demo-admin",
                    "--allow-approver-key-on-server",  # a one-machine demo: no separate approver
                    "--config",
                    str(self.cloud_cfg),
                ],
                self.logs / "cli.log",
            )
        trusted_root = Path(keys.get("trusted_root") or Path(keys["repo"]) / "metadata" / "root.json")
        # Provision the box like a real one: its group (which the update responder and rollout
        # status read) comes from here, never from what the box says.
        device_secret = self.workdir / "edge" / "mqtt.secret"
        if not device_secret.exists():
            device_secret.parent.mkdir(parents=True, exist_ok=True)
            _run_json(
                [
                    "cloud",
                    "devices",
                    "add",
                    DEMO_DEVICE,
                    "--site",
                    DEMO_SITE,
                    "--group",
                    DEMO_GROUP,
                    "--secret-out",
                    str(device_secret),
                    "--as",
                    "demo-admin",
                    "--config",
                    str(self.cloud_cfg),
                ],
                self.logs / "cli.log",
            )

        from cloud.training.untrained import BASELINE_VERSION, build_baseline_package

        baseline = self.workdir / "baseline" / BASELINE_VERSION
        if not (baseline / "manifest.json").exists():
            self.say("model       exporting the pretrained EfficientNet-Lite0 baseline to ONNX ...")
            shutil.rmtree(baseline.parent, ignore_errors=True)
            baseline = build_baseline_package(baseline.parent)
        token_file = self.workdir / "edge" / "status-token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        if not token_file.exists():
            token_file.write_text(secrets.token_urlsafe(18))
            token_file.chmod(0o600)
        self.status_token = token_file.read_text().strip()
        self.edge_cfg = self.workdir / "edge.toml"
        self.edge_cfg.write_text(
            edge_toml(
                self.workdir / "edge",
                self.broker.port,
                self.camera,
                baseline,
                self.status_port,
                token_file,
                trusted_root,
            )
        )

    def start_services(self) -> None:
        env = _child_env()
        for name, args in (
            ("cloud", ["cloud", "serve", "--config", str(self.cloud_cfg)]),
            ("edge", ["edge", "run", "--config", str(self.edge_cfg)]),
        ):
            log = (self.logs / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [*_parkwatch(), *args], stdout=log, stderr=log, env=env, start_new_session=True
            )
        from cloud.config import load
        from cloud.dashboard.users import ensure_demo_user

        user, password = ensure_demo_user(load(self.cloud_cfg))
        self.say(f"dashboard   http://127.0.0.1:{self.dashboard_port}/   login {user} / {password}")
        self.say(f"status page http://127.0.0.1:{self.status_port}/?token={self.status_token}")
        self.say(f"logs        {self.logs}/  (cloud.log, edge.log, build.log)")

    # ---- the build → approve → roll out loop ------------------------------------------------------
    def _build_and_release(self) -> None:
        cfg = ["--config", str(self.cloud_cfg)]
        log = self.logs / "build.log"
        try:
            ds = _run_json(["cloud", "ingest", str(self.lake), "--no-progress", *cfg], log)
            self.say(
                f"build       dataset {ds['dataset_version'][:12]}: {ds['counts']['total']} "
                f"({len(ds.get('duplicates', []))} duplicates dropped)"
            )
            models = _run_json(["cloud", "models", "list", *cfg], log)  # newest first
            dataset = ds["dataset_version"]
            reuse = [m for m in models if m.get("dataset_id") == dataset and m.get("gate_passed")]
            if reuse:
                version = reuse[0]["version"]
                self.say(f"build       reusing trained model {version} from an earlier demo run")
            else:
                self.say(
                    "build       training EfficientNet-Lite0 on the sample (a few minutes; see build.log)"
                )
                out = _run_json(
                    ["cloud", "train", "--dataset", ds["dataset_version"], "--no-progress", *cfg],
                    log,
                    timeout=3600,
                )
                version = out["model_version"]
                m = out["metrics"]
                box = m.get("decisions")
                said = f"; on the box {box['accuracy']:.4f}, what the gate judges" if box else ""
                self.say(f"build       trained {version}: test accuracy {m['accuracy']:.4f}{said}")
            _run_json(
                [
                    "cloud",
                    "approve",
                    version,
                    "--stage",
                    "staging",
                    "--as",
                    "demo-approver",
                    "--reason",
                    "demo: passed the gate on the sample lake",
                    *cfg,
                ],
                log,
            )
            _run_json(
                [
                    "cloud",
                    "rollout",
                    version,
                    "--group",
                    DEMO_GROUP,
                    "--as",
                    "demo-engineer",
                    "--reason",
                    "demo rollout",
                    "--allow-empty-group",  # the demo box talks to a local anonymous broker, unprovisioned
                    *cfg,
                ],
                log,
            )
            self.say(f"release     {version} approved for staging and rolled out to group {DEMO_GROUP}")
            self.loop_result = f"rolled out {version}"
        except Exception as e:  # the demo keeps serving predictions even if the loop fails
            self.loop_result = f"failed: {e}"
            self.say(f"build       the build/release loop stopped: {e}")

    # ---- watching --------------------------------------------------------------------------------
    def watch(self, duration: float | None, interval: float = 5.0) -> int:
        from cloud.config import load
        from cloud.fleet.store import FleetStore

        fleet_db = load(self.cloud_cfg).paths.fleet_db
        start, last_count, last_version = time.monotonic(), -1, None
        while not self.stop_event.wait(interval):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise DemoError(
                        f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}"
                    )
            if fleet_db.exists():
                with FleetStore(fleet_db) as store:
                    count = store.prediction_count()
                    latest = store.query(
                        "SELECT camera, label, confidence, model_version FROM predictions "
                        "ORDER BY ts DESC LIMIT 1"
                    )
                    by_label = store.query(
                        "SELECT label, COUNT(*) AS n FROM predictions GROUP BY label ORDER BY label"
                    )
                if count != last_count and latest:
                    p = latest[0]
                    labels = ", ".join(f"{r['label']} {r['n']}" for r in by_label)
                    self.say(
                        f"cloud store {count} predictions from {DEMO_DEVICE} ({labels}); latest: camera "
                        f"{p['camera']} {p['label']} ({p['confidence']:.2f}) by model {p['model_version']}"
                    )
                    if last_version and p["model_version"] != last_version:
                        self.say(
                            f"edge        now classifying with {p['model_version']} (hot-swapped, no restart)"
                        )
                    last_count, last_version = count, p["model_version"]
                    self.stored = count
            if duration is not None and time.monotonic() - start >= duration:
                return max(last_count, 0)
        return max(last_count, 0)

    def run(self, duration: float | None = None) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        # A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop the demo.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.prepare()
            self.start_services()
            if self.train:
                self.loop_thread = threading.Thread(
                    target=self._build_and_release, name="demo-build", daemon=True
                )
                self.loop_thread.start()
            self.say("watching    predictions arriving in the cloud store (Ctrl-C to stop)")
            return self.watch(duration)
        except KeyboardInterrupt:
            return self.stored
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        if self.broker:
            self.broker.stop()
