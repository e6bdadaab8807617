"""A simulated edge device that speaks the real v1 protocol over a real broker.

Used by the fleet tests and ``bench/ingest_fleet.py`` (and reusable by anyone who needs a
fleet without cameras). It numbers predictions like ``edge/outbox.py`` (from 1, never reused),
sends a retained ``online`` status and sets the retained ``offline`` last-will, and waits for
PUBACKs when asked so a test knows the broker holds what was sent.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.protocol import (
    DeviceStatus,
    Kind,
    ModelState,
    Prediction,
    PredictionBatch,
    Telemetry,
    Topics,
    encode,
)

ABSTAIN_BELOW = 0.6


class SimDevice:
    def __init__(
        self,
        host: str,
        port: int,
        site: str = "park1",
        device: str = "box1",
        group: str = "production",
        model_version: str = "m1",
        seed: int = 0,
        cameras: tuple[str, ...] = ("cam1",),
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.site, self.device, self.group = site, device, group
        self.model_version = model_version
        self.cameras = cameras
        self.rng = random.Random(seed)
        self.seq = 0  # last issued
        self.evicted_total = 0
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sim-{site}-{device}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        offline = DeviceStatus(device=device, site=site, state="offline", group=group, reason="last-will")
        self.client.will_set(self.topic(Kind.STATUS), encode(offline), qos=1, retain=True)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: self._connected.set()

    def topic(self, kind: Kind) -> str:
        return Topics.device(self.site, self.device, kind)

    # connection ----------------------------------------------------------------------------
    def connect(self, status: bool = True) -> SimDevice:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(self.host, self.port, keepalive=30, clean_start=True, properties=props)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"simulated device {self.device} could not connect to {self.host}:{self.port}")
        if status:
            self.status("online")
        return self

    def disconnect(self) -> None:
        """A clean shutdown: the device says offline itself (no last-will). Twice is harmless."""
        if not self._connected.is_set():
            return
        self._connected.clear()
        self.status("offline", reason="shutdown")
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker fires the last-will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    # publishing ----------------------------------------------------------------------------
    def publish_raw(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        with self._lock:
            self._pending.append(info)

    def publish(self, kind: Kind, msg: Any, retain: bool = False) -> None:
        self.publish_raw(self.topic(kind), encode(msg), retain=retain)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the broker acknowledged everything published so far."""
        with self._lock:
            pending, self._pending = self._pending, []
        deadline = time.monotonic() + timeout
        for info in pending:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise RuntimeError(f"{self.device}: broker did not acknowledge a publish within {timeout} s")

    def status(self, state: str, reason: str | None = None) -> None:
        self.publish(
            Kind.STATUS,
            DeviceStatus(
                device=self.device,
                site=self.site,
                state=state,
                group=self.group,
                software="sim",
                reason=reason,
                model_version=self.model_version,
            ),
            retain=True,
        )

    def model_state(self, state: str = "active", version: str | None = None) -> None:
        v = version or self.model_version
        self.publish(
            Kind.MODEL_STATE,
            ModelState(
                device=self.device, site=self.site, group=self.group, state=state, version=v, active_version=v
            ),
            retain=True,
        )

    def telemetry(self, **overrides: Any) -> Telemetry:
        base: dict[str, Any] = dict(
            device=self.device,
            site=self.site,
            cpu_percent=20 + self.rng.random() * 5,
            memory_percent=40.0,
            disk_percent=30.0,
            temperatures={"cpu": 50 + self.rng.random()},
            uptime_process_s=100.0,
            uptime_system_s=1000.0,
            latency_ms={"p50": 14 + self.rng.random(), "p95": 20 + self.rng.random(), "p99": 25.0},
            inference_fps=5.0,
            model_version=self.model_version,
            cameras={c: {"state": "streaming", "fps": 5.0} for c in self.cameras},
        )
        base.update(overrides)
        t = Telemetry(**base)
        self.publish(Kind.TELEMETRY, t)
        return t

    def make_predictions(
        self,
        n: int,
        cat_share: float = 0.5,
        degraded: float = 0.0,
        ts: float | None = None,
        spacing_s: float = 0.01,
    ) -> list[Prediction]:
        """``n`` predictions; ``degraded`` is the share of blurred frames with low confidence."""
        out = []
        t0 = ts if ts is not None else time.time() - n * spacing_s
        for i in range(n):
            self.seq += 1
            bad = self.rng.random() < degraded
            conf = 0.5 + 0.5 * (self.rng.betavariate(2.0, 2.0) if bad else self.rng.betavariate(6.0, 1.0))
            label = "cat" if self.rng.random() < cat_share else "dog"
            other = "dog" if label == "cat" else "cat"
            abstain = conf < ABSTAIN_BELOW
            out.append(
                Prediction(
                    seq=self.seq,
                    ts=t0 + i * spacing_s,
                    camera=self.cameras[i % len(self.cameras)],
                    label="abstain" if abstain else label,
                    confidence=round(conf, 4),
                    probs={label: round(conf, 4), other: round(1 - conf, 4)},
                    model_version=self.model_version,
                    abstain=abstain,
                    flags=["blurred"] if bad else [],
                    latency_ms=15.0,
                    snapshot=f"{self.device}-snap-{self.seq}" if abstain else None,
                )
            )
        return out

    def send(self, preds: list[Prediction], batch_size: int = 50) -> None:
        for i in range(0, len(preds), batch_size):
            chunk = preds[i : i + batch_size]
            self.publish(
                Kind.PREDICTIONS,
                PredictionBatch(
                    device=self.device, site=self.site, predictions=chunk, evicted_total=self.evicted_total
                ),
            )

    def predict(self, n: int, batch_size: int = 50, **kw: Any) -> list[Prediction]:
        preds = self.make_predictions(n, **kw)
        self.send(preds, batch_size)
        return preds

    def skip(self, n: int) -> None:
        """Lose ``n`` predictions for real: numbers are consumed and never sent."""
        self.seq += n
