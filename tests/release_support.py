"""Shared parts of the secure-delivery tests: model versions, a cloud, and edge hosts.

Everything is real: packages are copies of the baseline package with their own version
(ONNX metadata and manifest rewritten), the cloud runs the real ReleaseService against the test
broker, and each edge host is the real updater with the daemon's real MqttLink, ModelSlot and
model loader. The host is the daemon minus cameras and outbox, so 20 of them fit in one process.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from cloud.config import CloudConfig
from cloud.registry.models import ModelRecord
from cloud.registry.store import Registry
from cloud.release.channel import ReleaseChannel
from cloud.release.config import ReleaseConfig
from cloud.release.server import ReleaseService
from edge.config import DeviceSection, EdgeConfig, InferenceConfig
from edge.model import LoadedModel, ModelSlot, load_model
from edge.mqttlink import MqttLink
from edge.preprocess import load_image
from edge.updater.config import UpdaterConfig
from edge.updater.updater import ModelUpdater
from shared.config import MqttConfig, SecretRef
from shared.modelpkg import GOLDEN_FILE, MANIFEST_FILE, META_VERSION, MODEL_FILE, build_manifest
from shared.protocol import Kind, ModelState, Topics, encode


def make_version(base: Path, dest_root: Path, version: str, break_golden: bool = False) -> Path:
    """A valid package ``version`` made from ``base``; ``break_golden`` makes its self-test fail."""
    dst = dest_root / version
    shutil.copytree(base, dst)
    model = onnx.load(str(dst / MODEL_FILE))
    for prop in model.metadata_props:
        if prop.key == META_VERSION:
            prop.value = version
    onnx.save(model, str(dst / MODEL_FILE))
    if break_golden:
        golden = json.loads((dst / GOLDEN_FILE).read_text())
        for s in golden["samples"]:
            s["probs"] = list(reversed(s["probs"]))
        (dst / GOLDEN_FILE).write_text(json.dumps(golden))
    (dst / MANIFEST_FILE).unlink()
    (dst / MANIFEST_FILE).write_text(build_manifest(dst, version).model_dump_json(indent=2))
    return dst


# Test-split figures that pass the default [gate]; approval re-checks the stored metrics.
PASSING_METRICS = {
    "accuracy": 0.985,
    "per_class": {"cat": {"recall": 0.98}, "dog": {"recall": 0.99}},
    "recall_gap": 0.01,
    "ece": 0.02,
}


def register(
    cfg: CloudConfig,
    package: Path,
    version: str,
    gate_passed: bool = True,
    metrics: dict[str, Any] | None = None,
) -> None:
    with Registry(cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version=version,
                gate_passed=gate_passed,
                metrics=PASSING_METRICS if metrics is None else metrics,
                package_dir=str(package),
                tarball="",
                tarball_sha256="",
                gate={"failures": [] if gate_passed else ["accuracy below 0.9"]},
            )
        )


def mqtt_cfg(
    port: int, username: str | None = None, password_file: Path | None = None, client_id: str | None = None
) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1",
        port=port,
        username=username,
        client_id=client_id,
        password=SecretRef(file=password_file) if password_file else None,
    )


def cloud_config(data_dir: Path, mqtt: MqttConfig, **release: Any) -> CloudConfig:
    rel = {"refresh_check_s": 0.5, **release}
    return CloudConfig(data_dir=data_dir, mqtt=mqtt, release=ReleaseConfig(**rel))


def write_cloud_toml(cfg: CloudConfig, path: Path) -> Path:
    """The same config as a TOML file, for driving the CLI."""
    lines = [f'data_dir = "{cfg.data_dir}"', "[mqtt]", 'host = "127.0.0.1"', f"port = {cfg.mqtt.port}"]
    if cfg.mqtt.username:
        lines.append(f'username = "{cfg.mqtt.username}"')
    if cfg.mqtt.password and cfg.mqtt.password.file:
        lines.append(f'password = {{ file = "{cfg.mqtt.password.file}" }}')
    lines.append("[release]")
    for k, v in cfg.release.model_dump(exclude_none=True).items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v}")
        elif isinstance(v, list):
            lines.append(f"{k} = {json.dumps(v)}")
        else:
            lines.append(f'{k} = "{v}"')
    if cfg.fleet.database_url:  # a test on the PostgreSQL fleet store: the CLI must use it too
        lines += ["[fleet]", f'database_url = "{cfg.fleet.database_url}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def edge_config(
    state_dir: Path,
    mqtt: MqttConfig,
    trusted_root: Path,
    device: str,
    site: str = "park1",
    group: str = "staging",
    **updater: Any,
) -> EdgeConfig:
    upd = {
        "trusted_root": trusted_root,
        "check_interval_s": 3600,
        "request_timeout_s": 3.0,
        "warmup_runs": 1,
        **updater,
    }
    return EdgeConfig(
        device=DeviceSection(id=device, site=site, group=group),
        state_dir=state_dir,
        mqtt=mqtt,
        inference=InferenceConfig(threads=1),
        updater=UpdaterConfig(**upd),
    )


class EdgeHost:
    """The daemon's update-facing surface: cfg, model_slot, mqtt, report_model_state."""

    def __init__(self, cfg: EdgeConfig, initial: LoadedModel | None) -> None:
        self.cfg = cfg
        self.model_slot = ModelSlot(initial)
        self.mqtt = MqttLink(cfg.mqtt, cfg.device.site, cfg.device.id, cfg.device.group, "test")
        self.topic = Topics.device(cfg.device.site, cfg.device.id, Kind.MODEL_STATE)
        self.states: list[ModelState] = []

    def start(self, timeout: float = 10.0) -> EdgeHost:
        self.mqtt.start()
        if not self.mqtt.wait_connected(timeout):
            raise AssertionError(f"{self.cfg.device.id} did not connect: {self.mqtt.last_error}")
        return self

    def report_model_state(self, state: ModelState) -> None:
        self.states.append(state)
        self.mqtt.publish(self.topic, encode(state), qos=1, retain=True)

    def stop(self) -> None:
        self.mqtt.stop()


class Classifier:
    """Keeps classifying a photo with whatever model the slot holds, like the inference loop."""

    def __init__(self, slot: ModelSlot, image: Path) -> None:
        self.slot = slot
        self.image = load_image(image)
        self.count = 0
        self.errors: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            model = self.slot.current
            try:
                assert model is not None
                probs = model.classify([self.image])
                assert probs.shape == (1, len(model.labels))
                self.versions.add(model.version)
                self.count += 1
            except Exception as e:  # recorded, the test asserts there are none
                self.errors.append(repr(e))
            time.sleep(0.01)

    def __enter__(self) -> Classifier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def version_of(model: LoadedModel | None) -> str | None:
    """The version a model slot holds (None: it holds none), for assertions."""
    return None if model is None else model.version


def initial_model(package: Path) -> LoadedModel:
    return load_model(package, InferenceConfig(threads=1))


class Setup:
    """A cloud with 1.0.0 rolled out to 'staging' and 2.0.0 approved; one box running 1.0.0."""

    def __init__(self, tmp: Path, broker: Any, base: Path, **updater_kw: Any) -> None:
        self.tmp = tmp
        self.cfg = cloud_config(tmp / "cloud", mqtt_cfg(broker.port, client_id="release-test"))
        self.svc = ReleaseService(self.cfg)
        self.svc.start()
        assert self.svc.wait_connected()
        ch = self.svc.channel
        assert ch is not None
        self.ch: ReleaseChannel = ch
        self.ch.keys_init("tester", allow_approver_key_on_server=True)
        # Provisioned like a real box: its group, for the responder and rollout status, comes from here.
        self.ch.provision_device("park1", "box1", "staging", tmp / "box1.secret", "ops")
        self.pkgs = tmp / "pkgs"
        self.v1 = make_version(base, self.pkgs, "1.0.0")
        self.v2 = make_version(base, self.pkgs, "2.0.0")
        for v, p in (("1.0.0", self.v1), ("2.0.0", self.v2)):
            register(self.cfg, p, v)
            self.ch.approve(v, "staging", "qa-anna", "staging test")
        self.ch.rollout("1.0.0", "staging", "eng-bob", "initial")
        root = tmp / "trusted-root.json"
        root.write_bytes(self.ch.repo.trusted_root_bytes())
        self.ecfg = edge_config(tmp / "edge", mqtt_cfg(broker.port), root, "box1", **updater_kw)
        self.host = EdgeHost(self.ecfg, initial_model(self.v1)).start()
        self.updater = ModelUpdater(self.host)

    def close(self) -> None:
        self.host.stop()
        self.svc.stop()
