"""The edge config tree, loaded from ``/etc/parkwatch/edge.toml`` (or ``--config``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge.perception.config import RegionsConfig
from edge.updater.config import UpdaterConfig
from shared.config import MqttConfig, SecretRef, Section, load_config
from shared.errors import ConfigError, SecretError
from shared.images import DEFAULT_MAX_PIXELS
from shared.protocol.topics import check_segment

DEFAULT_PATH = Path("/etc/parkwatch/edge.toml")


class DeviceSection(Section):
    id: str
    site: str
    group: str = "production"

    @field_validator("id", "site", "group")
    @classmethod
    def _segment(cls, v: str) -> str:
        return check_segment(v, "id")


MAX_PIXELS = 16384  # the protocol's bound on a region box (shared.protocol MAX_COORD)


class ZoneConfig(Section):
    """A named area of one camera's view that is always classified as a region of its own
    (a gate, a lawn): a rectangle ``rect = [x, y, w, h]`` or a ``polygon = [[x, y], ...]``, in
    pixels of the camera's frames."""

    name: str
    rect: list[int] | None = Field(None, description="[x, y, w, h] in frame pixels")
    polygon: list[list[float]] | None = Field(None, description="[[x, y], ...]: 3 to 64 points, frame pixels")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_segment(v, "zone name")

    @field_validator("rect")
    @classmethod
    def _rect(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if len(v) != 4:
            raise ValueError("a rect is [x, y, w, h]: four whole numbers of frame pixels")
        x, y, w, h = v
        if min(x, y) < 0 or w < 1 or h < 1 or x + w > MAX_PIXELS or y + h > MAX_PIXELS:
            raise ValueError(
                f"rect {v}: x and y must be at least 0, w and h at least 1, and the rect inside "
                f"{MAX_PIXELS}x{MAX_PIXELS} pixels"
            )
        return v

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is None:
            return v
        if not 3 <= len(v) <= 64:
            raise ValueError(f"a polygon needs 3 to 64 [x, y] points, not {len(v)}")
        for pt in v:
            if len(pt) != 2 or not all(0 <= c <= MAX_PIXELS for c in pt):
                raise ValueError(f"polygon point {pt} must be [x, y] with both between 0 and {MAX_PIXELS}")
        area = 0.5 * abs(sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(v, v[1:] + v[:1], strict=True)))
        if area < 1:
            raise ValueError("the polygon encloses no area (points in a line, or repeated)")
        return v

    @model_validator(mode="after")
    def _one_shape(self) -> ZoneConfig:
        if (self.rect is None) == (self.polygon is None):
            raise ValueError(
                f"zone {self.name!r}: give exactly one of rect = [x, y, w, h] or polygon = [[x, y], ...]"
            )
        return self

    def points(self) -> tuple[tuple[float, float], ...]:
        if self.rect is not None:
            x, y, w, h = self.rect
            return ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        assert self.polygon is not None
        return tuple((float(p[0]), float(p[1])) for p in self.polygon)


class CameraConfig(Section):
    id: str
    kind: Literal["rtsp", "mjpeg", "usb", "file", "folder"]
    url: str = Field(description="rtsp:// or http:// URL, /dev/videoN or index, file or folder path")
    fps: float | None = Field(2.0, ge=0, description="cap on frames classified per second; 0 = no cap")
    loop: bool = Field(True, description="file/folder: start again at the end")
    enabled: bool = True
    stall_after_s: float = Field(10.0, gt=0)
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=64 * 64,
        le=100_000_000,
        description="frames declaring more are refused undecoded",
    )
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=16)

    @field_validator("id")
    @classmethod
    def _segment(cls, v: str) -> str:
        return check_segment(v, "camera id")

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, v: list[ZoneConfig]) -> list[ZoneConfig]:
        names = [z.name for z in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"zone name {dup!r} appears twice")
        return v

    @field_validator("url")
    @classmethod
    def _url_fits_kind(cls, v: str, info: ValidationInfo) -> str:
        """An http:// URL on an rtsp camera (or the reverse) can never work: say so at check time."""
        kind = info.data.get("kind")
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        wanted = {"rtsp": ("rtsp", "rtsps"), "mjpeg": ("http", "https")}.get(str(kind))
        if wanted and scheme not in wanted:
            raise ValueError(
                f"a {kind} camera needs a {wanted[0]}:// URL, "
                f"got {scheme + '://' if scheme else repr(v[:20])}"
                + (
                    ' (an http:// URL is an mjpeg camera: set kind = "mjpeg")'
                    if kind == "rtsp" and scheme in ("http", "https")
                    else ""
                )
                + (
                    ' (an rtsp:// URL is an rtsp camera: set kind = "rtsp")'
                    if kind == "mjpeg" and scheme.startswith("rtsp")
                    else ""
                )
            )
        if kind in ("usb", "file", "folder") and scheme:
            raise ValueError(f"a {kind} camera takes a device or path, not a {scheme}:// URL")
        return v


class IntegrityConfig(Section):
    """Thresholds on an 8-bit grey thumbnail; docs/technician.md explains each flag."""

    black_max_mean: float = Field(16.0, ge=0, le=255)
    overexposed_min_mean: float = Field(240.0, ge=0, le=255)
    frozen_max_diff: float = Field(0.5, ge=0, description="mean abs difference between frames")
    frozen_min_frames: int = Field(10, ge=2)
    blur_min_laplacian_var: float = Field(15.0, ge=0)
    covered_max_std: float = Field(6.0, ge=0)
    tamper_min_change: float = Field(60.0, ge=0, description="sudden mean abs change vs reference")


class InferenceConfig(Section):
    threads: int = Field(
        0,
        ge=0,
        le=64,
        description="ONNX Runtime intra-op threads; 0 = auto: one less than the CPU cores (at least 1)",
    )
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    confidence_threshold: float = Field(0.6, ge=0, le=1)
    max_batch: int = Field(8, ge=1, le=256)
    motion_gating: bool = False
    motion_threshold: float = Field(2.0, ge=0)
    max_batch_regions: int = Field(
        32, ge=1, le=1024, description="model inputs per session.run: regions of all cameras' frames together"
    )
    motion_pixel_diff: float = Field(
        25.0, gt=0, le=255, description="grey-level change that counts a thumbnail pixel as moving"
    )
    motion_min_area: int = Field(
        6, ge=1, le=19200, description="thumbnail pixels (of 160x120) a moving blob needs to become a region"
    )
    full_scan_s: float = Field(
        60.0, gt=0, description="tile the whole frame at least this often, even while motion boxes are known"
    )
    regions: RegionsConfig = Field(default_factory=RegionsConfig)

    @property
    def effective_threads(self) -> int:
        """Auto leaves one core to the camera readers: decoding and preprocessing a frame costs
        about 2.4 ms of CPU, and on a 2-core box an ONNX Runtime using both cores starves them
        (measured: 0.94 of raw session.run throughput with 1 thread, 0.78 with 2)."""
        return self.threads or max(1, (os.cpu_count() or 2) - 1)


class ModelSection(Section):
    initial: Path | None = Field(None, description="model package dir or .onnx used before any update")


class OutboxConfig(Section):
    path: Path | None = Field(None, description="default: <state_dir>/outbox.db")
    max_rows: int = Field(1_000_000, ge=100)
    batch_size: int = Field(200, ge=1, le=10_000)
    flush_interval_s: float = Field(0.5, gt=0)
    commit_linger_s: float = Field(
        0.05,
        ge=0,
        le=1,
        description="a commit waits this long for more predictions to join it (one fsync per group); "
        "0 commits each batch at once",
    )
    max_db_mb: float | None = Field(
        None, gt=0, description="cap on the database size; beyond it writes fail as 'full' (counted)"
    )
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full: a power cut loses nothing committed; normal: faster, may lose the last ms"
    )


class TelemetryConfig(Section):
    interval_s: float = Field(10.0, gt=0)


class StatusPageConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretRef | None = None


class SnapshotConfig(Section):
    enabled: bool = False
    max_confidence: float = Field(0.75, ge=0, le=1)
    keep_days: float = Field(14.0, gt=0)
    max_count: int = Field(2000, ge=1)
    upload_allowed: bool = Field(False, description="may frames leave the box (GDPR: people in view)")


class EdgeConfig(Section):
    device: DeviceSection
    state_dir: Path = Path("/var/lib/parkwatch")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    cameras: list[CameraConfig] = Field(default_factory=list)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    status_page: StatusPageConfig = Field(default_factory=StatusPageConfig)
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    updater: UpdaterConfig = Field(default_factory=UpdaterConfig)

    @model_validator(mode="after")
    def _unique_cameras(self) -> EdgeConfig:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} appears twice in [[cameras]]")
            seen.add(cam.id)
        return self

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.state_dir / "outbox.db"


def load(path: str | Path = DEFAULT_PATH) -> EdgeConfig:
    return load_config(EdgeConfig, path)


#: values the shipped edge.example.toml carries until someone edits them
TEMPLATE_MARK = "CHANGE-ME"
TEMPLATE_DEVICE = ("box-01", "bcn-park-1")


def template_leftovers(cfg: EdgeConfig) -> list[tuple[str, str]]:
    """(key, problem) for every value still as provisioning/edge.example.toml ships it: a box with
    them runs, but talks to the wrong camera password or under another box's name."""
    found = []
    if (cfg.device.id, cfg.device.site) == TEMPLATE_DEVICE:
        found.append(
            (
                "device.id",
                f"still the example's {cfg.device.id!r} at {cfg.device.site!r}: set this box's name and park",
            )
        )
    for n, cam in enumerate(cfg.cameras, 1):
        if TEMPLATE_MARK in cam.url:
            found.append(
                (f"cameras[{n}].url", f"camera {cam.id!r} still has the example's {TEMPLATE_MARK} password")
            )
    return found


def preflight(cfg: EdgeConfig, path: str | Path) -> list[str]:
    """What a valid file can still get wrong: secrets that cannot be read are errors naming
    ``path`` (so ``run`` fails before it connects anything); missing files and an empty camera
    list are warnings, since a box may be configured before its model or cameras exist."""
    refs = [("mqtt.password", cfg.mqtt.password)]
    if cfg.status_page.enabled:
        refs.append(("status_page.token", cfg.status_page.token))
    for key, ref in refs:
        if ref is None:
            continue
        try:
            ref.resolve(key)
        except SecretError as e:
            raise ConfigError(str(path), key, f"{e.problem} ({e.path})") from e
    warnings = []
    if not cfg.cameras:
        warnings.append("no [[cameras]]: the box will classify nothing until one is added")
    initial = cfg.model.initial
    if initial is not None and not initial.exists():
        warnings.append(f"model.initial {initial} does not exist: the box starts without a model")
    elif initial is not None and initial.is_dir() and not (initial / "model.onnx").is_file():
        # `cloud baseline OUT` builds into OUT/VERSION: naming OUT itself is an easy slip, and the
        # box would only say "no model loaded" once it runs.
        inside = sorted(p.name for p in initial.iterdir() if (p / "model.onnx").is_file())
        hint = f"; the package inside is {initial / inside[0]}" if len(inside) == 1 else ""
        if len(inside) > 1:
            hint = f"; packages inside: {', '.join(inside)}"
        warnings.append(
            f"model.initial {initial} is a folder without model.onnx, not a model package: the box "
            f"starts without a model{hint}"
        )
    root = cfg.updater.trusted_root
    if cfg.updater.enabled and root is not None and not root.exists():
        warnings.append(f"updater.trusted_root {root} does not exist: model updates are off")
    return warnings
