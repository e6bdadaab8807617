"""The edge daemon: wires cameras, inference, outbox, publisher, telemetry, status page, updater.

Contracts other parts rely on::

    run_daemon(cfg: EdgeConfig) -> None          # `parkwatch edge run`; returns after SIGTERM/SIGINT
    Daemon(cfg)                                  # in-process (tests, updater); also a context manager
        .start() / .stop()
        .cfg                                     # the EdgeConfig
        .model_slot: ModelSlot                   # .current, .previous, .swap(new), .rollback()
        .mqtt: MqttLink                          # .publish(topic, payload, qos, retain) -> MQTTMessageInfo
                                                 # .subscribe(filter, callback(msg))  (survives reconnects)
        .report_model_state(ModelState) -> None  # retained model/state + status page
        .load_model(path) -> LoadedModel         # edge.model.load_model with this box's [inference]
        .snapshot() -> dict                      # what /api/status serves
        .outbox, .engine, .publisher, .cameras, .errors, .status_url, .status_token

Shutdown order matters for "nothing accepted is lost": cameras stop producing, the inference
loop commits the batch in hand to the outbox, the publisher gets a few seconds to have the
backlog acknowledged, then ``offline`` is published (retained) and the outbox is closed.
Whatever was not acknowledged stays in the outbox for the next start.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import socket
import threading
import time
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from edge.cameras import Camera
from edge.config import EdgeConfig
from edge.errors import ModelError
from edge.events import RecentDeltas, RecentErrors
from edge.inference import InferenceEngine
from edge.model import LoadedModel, ModelSlot, load_model
from edge.mqttlink import MqttLink
from edge.outbox import Outbox
from edge.perception.regions import Zone
from edge.publisher import Publisher
from edge.sdnotify import Notifier, watchdog_interval_s
from edge.snapshots import SnapshotStore
from edge.sources import redact_text, redact_url
from edge.telemetry import HostSampler
from shared.atomic import atomic_write_text
from shared.protocol import Kind, ModelState, Snapshot, Telemetry, Topics, encode
from shared.protocol.counter import RejectCounter

log = logging.getLogger("parkwatch.edge")

HEARTBEAT_LIMIT_S = 60.0


def software_version() -> str:
    try:
        return metadata.version("parkwatch")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Daemon:
    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.software = software_version()
        self.started_ts = time.time()
        self.errors = RecentErrors()
        #: growth of the lifetime counters over the last 10 minutes: what the banner warns on
        self.recent = RecentDeltas(600.0)
        # Messages the box receives (release notices, update responses) that fail validation:
        # counted by kind, logged once per kind, reported in telemetry; never a crash.
        self.rejects = RejectCounter()
        self.wake = threading.Event()
        self.model_slot = ModelSlot()
        self.mqtt = MqttLink(cfg.mqtt, cfg.device.site, cfg.device.id, cfg.device.group, self.software)
        self.cameras = [Camera(c, self.wake) for c in cfg.cameras]
        for cam in self.cameras:
            cam.on_error = self.errors.add
        self.outbox: Outbox | None = None
        self.engine: InferenceEngine | None = None
        self.publisher: Publisher | None = None
        self.host: HostSampler | None = None
        self.model_state: ModelState | None = None
        self.last_telemetry: Telemetry | None = None
        self.last_host: dict[str, Any] = {}
        self.telemetry_sent = 0
        self.telemetry_skipped = 0
        self.status_url: str | None = None
        self.status_token: str | None = None
        self._status_server: Any = None
        self._status_thread: threading.Thread | None = None
        self._updater: Any = None
        self._stop = threading.Event()
        self._telemetry_thread: threading.Thread | None = None
        self._telemetry_seq = 0
        self._started = False
        self.model_topic = Topics.device(cfg.device.site, cfg.device.id, Kind.MODEL_STATE)
        self.telemetry_topic = Topics.device(cfg.device.site, cfg.device.id, Kind.TELEMETRY)
        self.snapshot_topic = Topics.device(cfg.device.site, cfg.device.id, Kind.SNAPSHOT)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Daemon:
        """Start every part; if one fails, the parts already running are stopped again."""
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(
            cfg.outbox_path, cfg.outbox.max_rows, cfg.outbox.max_db_mb, cfg.outbox.synchronous.upper()
        )
        self.host = HostSampler(cfg.state_dir)
        updated = self._updater_active_package()
        if updated is not None and self._load_initial(
            updated, "TUF-verified earlier (activated by the updater)"
        ):
            pass
        elif cfg.model.initial is not None:
            self._load_initial(cfg.model.initial)
        snapshots = (
            SnapshotStore(cfg.snapshots, cfg.state_dir / "snapshots", self._upload_snapshot)
            if cfg.snapshots.enabled
            else None
        )
        self.publisher = Publisher(self.outbox, self.mqtt, cfg.outbox.batch_size, cfg.outbox.flush_interval_s)
        self.engine = InferenceEngine(
            self.cameras,
            self.model_slot,
            self.outbox,
            cfg.inference,
            cfg.integrity,
            self.wake,
            self.errors,
            snapshots,
            on_commit=self.publisher.notify,
            zones={c.id: [Zone(z.name, z.points()) for z in c.zones] for c in cfg.cameras},
            commit_linger_s=cfg.outbox.commit_linger_s,
        )
        self.mqtt.on_connection_change(self._on_connection)
        self.mqtt.start()
        self.publisher.start()
        for cam in self.cameras:
            cam.prepare = self.engine.prepare
            cam.start()
        self.engine.start()
        self._telemetry_thread = threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True)
        self._telemetry_thread.start()
        if cfg.status_page.enabled:
            self._start_status_page()
        if cfg.updater.enabled and cfg.updater.trusted_root:
            try:
                from edge.updater.runner import start_updater

                self._updater = start_updater(self)
            except Exception as e:  # the daemon keeps classifying with the model it has
                self.errors.add("updater", f"cannot start the updater: {type(e).__name__}: {e}")
                log.exception("cannot start the updater")
        self._observe_counters()  # the baseline: totals from before this start are not "recent"
        log.info(
            "parkwatch edge %s started: device %s/%s, %d camera(s), model %s",
            self.software,
            cfg.device.site,
            cfg.device.id,
            len(self.cameras),
            self.model_slot.current.version if self.model_slot.current else "none",
        )

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._stop.set()
        if self._updater is not None:
            try:
                self._updater.stop()
            except Exception:
                log.exception("updater did not stop cleanly")
        for cam in self.cameras:
            cam._stop.set()  # stop all at once, then wait for each
        for cam in self.cameras:
            cam.stop()
        if self.engine is not None:
            self.engine.stop()
        if self.publisher is not None:
            self.publisher.stop(drain_timeout_s=3.0)
        if self._telemetry_thread is not None:
            self._telemetry_thread.join(5)
        self._stop_status_page()
        self.mqtt.stop("shutdown")
        if self.outbox is not None:
            self.outbox.close()
        log.info("parkwatch edge stopped")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def healthy(self) -> bool:
        """What the systemd watchdog pings on: the inference and telemetry loops are turning."""
        e = self.engine
        if e is None or not e.alive:
            return False
        if time.monotonic() - e.heartbeat > HEARTBEAT_LIMIT_S:
            return False
        return self._telemetry_thread is not None and self._telemetry_thread.is_alive()

    # -- model --------------------------------------------------------------------------------------
    def _updater_active_package(self) -> Path | None:
        """The package the updater activated last (it outlives restarts), if updates are on."""
        if not (self.cfg.updater.enabled and self.cfg.updater.trusted_root):
            return None
        try:
            from edge.updater.updater import active_package

            return active_package(self.cfg)
        except Exception as e:
            log.warning("cannot read the updater's state (%s); using [model] initial", e)
            return None

    def _load_initial(self, path: Path, verification: str | None = None) -> bool:
        try:
            model = load_model(path, self.cfg.inference, verification=verification)
        except ModelError as e:
            msg = f"initial model refused: {e}"
            self.errors.add("model", msg)
            log.error("%s; the daemon runs without a model until a valid one is installed", msg)
            self.model_state = self._model_state("failed", reason=str(e))
            return False
        self.model_slot.swap(model)
        self.mqtt.model_version = model.version
        self.model_state = self._model_state("active", version=model.version)
        return True

    def _model_state(self, state: str, **kw: Any) -> ModelState:
        cur, prev = self.model_slot.current, self.model_slot.previous
        kw.setdefault("active_version", cur.version if cur else None)
        kw.setdefault("previous_version", prev.version if prev else None)
        return ModelState(
            device=self.cfg.device.id,
            site=self.cfg.device.site,
            group=self.cfg.device.group,
            state=state,
            **kw,
        )

    def load_model(self, path: str | Path) -> LoadedModel:
        """Load through the same path as the initial model (the updater uses this or load_model)."""
        return load_model(path, self.cfg.inference)

    def report_model_state(self, state: ModelState) -> None:
        """Publish ``state`` retained on ``model/state`` and show it on the status page."""
        self.model_state = state
        if state.active_version:
            self.mqtt.model_version = state.active_version
        if state.state == "failed" and state.reason:
            self.errors.add("model", f"{state.version or 'update'}: {state.reason}")
        try:
            self.mqtt.publish(self.model_topic, encode(state), qos=1, retain=True)
        except (RuntimeError, ValueError) as e:
            log.warning("cannot publish model state now (%s); it is re-sent on reconnect", e)

    def _upload_snapshot(self, sid: str, camera: str, ts: float, jpeg: bytes) -> bool:
        """Send a kept frame for labelling (only called when ``upload_allowed``); best effort."""
        if not self.mqtt.connected:
            return False
        msg = Snapshot(
            device=self.cfg.device.id,
            site=self.cfg.device.site,
            id=sid,
            camera=camera,
            ts=ts,
            jpeg=base64.b64encode(jpeg).decode("ascii"),
        )
        self.mqtt.publish(self.snapshot_topic, encode(msg), qos=1)
        return True

    def _on_connection(self, up: bool) -> None:
        if up and self.model_state is not None:
            self.mqtt.publish(self.model_topic, encode(self.model_state), qos=1, retain=True)

    # -- telemetry ----------------------------------------------------------------------------------
    def _observe_counters(self) -> dict[str, Any]:
        ob, e = self.outbox, self.engine
        return {
            "window_s": self.recent.window_s,
            "evicted": self.recent.observe("evicted", ob.evicted_total if ob else 0),
            "write_errors": self.recent.observe("write_errors", ob.write_errors if ob else 0),
            "lost_predictions": self.recent.observe("lost", e.lost_predictions if e else 0),
            "inference_errors": self.recent.observe("inference_errors", e.inference_errors if e else 0),
        }

    def build_telemetry(self) -> Telemetry:
        assert self.host is not None and self.engine is not None and self.outbox is not None
        self._observe_counters()
        host = self.host.sample()
        self.last_host = host
        e = self.engine
        cams = {
            c.id: c.telemetry(e.checkers[c.id].snapshot() if c.id in e.checkers else {}) for c in self.cameras
        }
        self._telemetry_seq += 1
        cur = self.model_slot.current
        host_fields = {k: v for k, v in host.items() if k in Telemetry.model_fields}
        # none_rate only to a cloud that said it takes schema-2 telemetry (an old one refuses it)
        extra = (
            {"schema_version": 2, "none_rate": e.none_rate()}
            if 2 in self.mqtt.cloud_telemetry_schemas
            else {}
        )
        return Telemetry(
            **extra,
            device=self.cfg.device.id,
            site=self.cfg.device.site,
            seq=self._telemetry_seq,
            latency_ms=e.latency_percentiles(),
            inference_fps=e.fps(),
            inference_errors=e.inference_errors,
            abstain_rate=e.abstain_rate(),
            cameras=cams,
            outbox_backlog=self.outbox.backlog,
            outbox_evicted=self.outbox.evicted_total,
            outbox_errors=self.outbox.write_errors,
            model_version=cur.version if cur else None,
            invalid_messages=self.rejects.snapshot(),
            lost_predictions=e.lost_predictions,
            **host_fields,
        )

    def _telemetry_loop(self) -> None:
        interval = self.cfg.telemetry.interval_s
        self._stop.wait(min(interval, 2.0))
        while not self._stop.is_set():
            try:
                t = self.build_telemetry()
                self.last_telemetry = t
                if self.mqtt.connected:
                    self.mqtt.publish(self.telemetry_topic, encode(t), qos=1)
                    self.telemetry_sent += 1
                else:
                    self.telemetry_skipped += 1  # a snapshot; the next one replaces it
            except Exception as e:
                self.errors.add("telemetry", f"{type(e).__name__}: {e}")
                log.exception("telemetry step failed")
            self._stop.wait(interval)

    # -- status page --------------------------------------------------------------------------------
    def _resolve_token(self) -> str:
        ref = self.cfg.status_page.token
        if ref is not None:
            return ref.resolve("status_page.token")
        path = self.cfg.state_dir / "status-token"
        try:
            tok = path.read_text().strip()
            if tok:
                return tok
        except FileNotFoundError:
            pass
        tok = secrets.token_urlsafe(24)
        atomic_write_text(path, tok + "\n", mode=0o600)
        log.warning("no [status_page] token configured: generated one in %s", path)
        return tok

    def _start_status_page(self) -> None:
        import uvicorn

        from edge.status.app import create_app

        self.status_token = self._resolve_token()
        sp = self.cfg.status_page
        fam = socket.AF_INET6 if ":" in sp.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((sp.host, sp.port))
        except OSError as e:
            sock.close()
            msg = f"status page cannot listen on {sp.host}:{sp.port}: {e.strerror}; change [status_page] port"
            self.errors.add("status_page", msg)
            log.error("%s", msg)
            return
        sock.listen(64)
        host, port = sock.getsockname()[:2]
        self.status_url = f"http://{'[' + host + ']' if fam == socket.AF_INET6 else host}:{port}"
        app = create_app(self, self.status_token)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        self._status_server = server
        self._status_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="status-page", daemon=True
        )
        self._status_thread.start()
        log.info("status page on %s", self.status_url)

    def _stop_status_page(self) -> None:
        if self._status_server is not None:
            self._status_server.should_exit = True
        if self._status_thread is not None:
            self._status_thread.join(5)

    # -- what the status page reads ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        e, ob, cur = self.engine, self.outbox, self.model_slot.current
        cams = []
        for c in self.cameras:
            view = e.views.get(c.id) if e else None
            tel = c.telemetry(e.checkers[c.id].snapshot() if e and c.id in e.checkers else {})
            cams.append(
                {
                    "id": c.id,
                    "kind": c.cfg.kind,
                    "url": redact_url(c.cfg.url),
                    "fps_cap": c.cfg.fps,
                    **tel.model_dump(),
                    "taken": c.taken,
                    "last_error_ts": c.last_error_ts,
                    "prediction": view.prediction if view else None,
                    "flags": view.flags if view else [],
                    "zones": [z.model_dump(exclude_none=True) for z in c.cfg.zones],
                    "regions_evaluated": len(view.evaluated) if view else 0,
                    "has_frame": view is not None,
                }
            )
        prev = self.model_slot.previous
        return {
            "device": self.cfg.device.id,
            "site": self.cfg.device.site,
            "group": self.cfg.device.group,
            "software": self.software,
            "started_ts": self.started_ts,
            "uptime_s": round(time.time() - self.started_ts, 1),
            "healthy": self.healthy(),
            "model": cur.describe() if cur else None,
            "previous_model": prev.version if prev else None,
            "model_state": self.model_state.to_wire() if self.model_state else None,
            "broker": {
                "connected": self.mqtt.connected,
                "host": self.cfg.mqtt.host,
                "port": self.cfg.mqtt.port,
                "client_id": self.mqtt.client_id,
                "connects": self.mqtt.connects,
                "disconnects": self.mqtt.disconnects,
                "last_error": self.mqtt.last_error,
                "failed_attempts": self.mqtt.failed_attempts,
                "since_ts": self.mqtt.last_change_ts,
            },
            "outbox": {
                "backlog": ob.backlog if ob else 0,
                "evicted_total": ob.evicted_total if ob else 0,
                "write_errors": ob.write_errors if ob else 0,
                "last_seq": ob.last_seq if ob else 0,
                "last_error": ob.last_error if ob else None,
                "path": str(self.cfg.outbox_path),
                "inflight": self.publisher.inflight if self.publisher else 0,
                "publish_latency_ms": self.publisher.ack_latency_percentiles() if self.publisher else {},
                "undelivered": self.publisher.undelivered() if self.publisher else None,
            },
            "inference": {
                "classified": e.classified if e else 0,
                "fps": e.fps() if e else 0.0,
                "latency_ms": e.latency_percentiles() if e else {},
                "errors": e.inference_errors if e else 0,
                "abstain_rate": e.abstain_rate() if e else None,
                "none_rate": e.none_rate() if e else None,
                "regions_run": e.regions_run if e else 0,
                "batches": e.batches if e else 0,
                "pet_regions": e.pet_regions if e else 0,
                "regions_enabled": self.cfg.inference.regions.enabled,
                "skipped_static": e.skipped_static if e else 0,
                "skipped_no_model": e.skipped_no_model if e else 0,
                "lost_predictions": e.lost_predictions if e else 0,
                "threshold": self.cfg.inference.confidence_threshold,
            },
            "telemetry": {"sent": self.telemetry_sent, "skipped_offline": self.telemetry_skipped},
            "recent": self._observe_counters(),
            "snapshots": (
                {
                    "saved": snaps.saved,
                    "uploaded": snaps.uploaded,
                    "upload_skipped": snaps.upload_skipped,
                    "reduced": snaps.reduced,
                    "too_large": snaps.too_large,
                    "upload_errors": snaps.upload_errors,
                    "upload_allowed": self.cfg.snapshots.upload_allowed,
                }
                if (snaps := e.snapshots if e else None) is not None
                else None
            ),
            "host": self.last_host,
            "cameras": cams,
            "recent_predictions": list(e.recent)[:20] if e else [],
            "errors": self.errors.list(),
        }

    def retry_camera(self, camera_id: str) -> bool | None:
        """The status page's "retry now": None if no such camera, False if it is not waiting."""
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam.retry_now()
        return None

    def camera_view(self, camera_id: str) -> Any:
        return self.engine.views.get(camera_id) if self.engine else None


class RedactingFilter(logging.Filter):
    """Hides URL passwords in every log line (a camera URL may sit in any message or argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def _configure_logging() -> None:
    """A daemon's lifecycle lines (connected, status page URL, camera states) belong in the journal,
    so parkwatch loggers default to INFO even when the CLI left the root at WARNING."""
    root = logging.getLogger()
    if not root.handlers:
        fmt = (
            "%(levelname)s %(name)s: %(message)s"
            if os.environ.get("INVOCATION_ID")
            else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )  # journald adds its own timestamps
        logging.basicConfig(level=logging.WARNING, format=fmt)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    ours = logging.getLogger("parkwatch")
    level = os.environ.get("PARKWATCH_LOG_LEVEL")
    if level:
        ours.setLevel(level.upper())
    elif ours.level == logging.NOTSET and root.level > logging.INFO:
        ours.setLevel(logging.INFO)


def run_daemon(cfg: EdgeConfig) -> None:
    """Run until SIGTERM/SIGINT; tells systemd READY=1 and pings its watchdog while healthy."""
    _configure_logging()
    stop = threading.Event()
    notifier = Notifier()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    daemon = Daemon(cfg)
    try:
        daemon.start()  # raises a ParkwatchError (exit 1 or 2 via the CLI) with the parts stopped
        notifier.ready(f"classifying with {len(daemon.cameras)} camera(s)")
        interval = watchdog_interval_s()
        tick = min(interval, 5.0) if interval else 5.0
        while not stop.wait(tick):
            if interval and daemon.healthy():
                notifier.watchdog()
        notifier.stopping("finishing in-flight frames")
    finally:
        daemon.stop()
        notifier.close()
        for s, h in old.items():
            signal.signal(s, h)
