"""Reliability with real processes: the daemon as `parkwatch edge run`, the real Mosquitto.

The broker is stopped for 30 s mid-stream and the daemon is killed with SIGKILL once (while the
broker is away, so its outbox holds unsent rows); every prediction that entered the outbox must
reach the cloud-side subscriber, and the store (a set keyed by seq, as cloud ingest does) holds
each exactly once with no gap. Also: READY/WATCHDOG reach a real notify socket, SIGTERM
publishes ``offline``.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.broker import EmbeddedBroker
from shared.protocol import DeviceStatus, PredictionBatch, decode
from shared.protocol.topics import ROOT
from tests.edge_fixtures import edge_config, make_tiny_package, write_toml

REPO = Path(__file__).resolve().parent.parent
PARKWATCH = REPO / ".venv" / "bin" / "parkwatch"


def parkwatch_cmd() -> list[str]:
    if PARKWATCH.exists():
        return [str(PARKWATCH)]
    return [sys.executable, "-m", "shared.cli"]


class Store:
    """A persistent QoS-1 subscriber standing in for cloud ingest: stores batches keyed by seq."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.received: Counter[int] = Counter()
        self.statuses: list[DeviceStatus] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="reliability-store",
            protocol=mqtt.MQTTv5,
        )
        c.reconnect_delay_set(1, 2)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_: self.connected.clear()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert self.connected.wait(10)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, _rc: Any, _p: Any = None) -> None:
        client.subscribe(f"{ROOT}/dev/+/+/predictions", qos=1)
        client.subscribe(f"{ROOT}/dev/+/+/status", qos=1)
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        _, obj = decode(msg.topic, msg.payload)
        with self.lock:
            if isinstance(obj, PredictionBatch):
                self.received.update(p.seq for p in obj.predictions)
            elif isinstance(obj, DeviceStatus):
                self.statuses.append(obj)

    def max_seq(self) -> int:
        with self.lock:
            return max(self.received, default=0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def outbox_numbers(db: Path) -> tuple[int, int]:
    """(last seq issued, rows still waiting), read while the daemon may be writing (WAL)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        backlog = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        return (int(row[0]) if row else 0), int(backlog)
    finally:
        con.close()


def spawn(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    e = {**os.environ, "PARKWATCH_LOG_LEVEL": "INFO", **(env or {})}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [*parkwatch_cmd(), "edge", "run", "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=e,
            cwd=REPO,
        )


def wait_until(cond: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@pytest.mark.slow
def test_broker_outage_and_kill_9_lose_nothing(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path
) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", "r1")
    cam = {"id": "c1", "kind": "folder", "url": str(pets_sample), "fps": 8}
    cfg = edge_config(tmp_path, broker, [cam], pkg, outbox={"batch_size": 16, "flush_interval_s": 0.2})
    conf = write_toml(tmp_path / "edge.toml", cfg)
    db = cfg.outbox_path
    log = tmp_path / "daemon.log"
    store = Store(broker)
    proc = spawn(conf, log)
    try:
        wait_until(lambda: store.max_seq() >= 20, 30, "first predictions", log)
        broker.stop()  # --- 30 s outage starts
        outage_start = time.monotonic()
        wait_until(lambda: outbox_numbers(db)[1] >= 40, 15, "backlog growing during the outage", log)
        proc.send_signal(signal.SIGKILL)  # power-cut style: no shutdown code runs
        proc.wait(10)
        last_before_kill, backlog_at_kill = outbox_numbers(db)
        assert backlog_at_kill >= 40
        proc = spawn(conf, log)  # restarts while the broker is still away
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_start)))
        _, backlog_in_outage = outbox_numbers(db)
        assert outbox_numbers(db)[0] > last_before_kill  # numbering continued after the restart
        broker.start()  # --- outage over; same port, persistent sessions
        wait_until(lambda: outbox_numbers(db)[1] < 10, 60, "backlog to drain", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        last_seq, backlog = outbox_numbers(db)
        if backlog:  # the next start sends what a graceful stop could not
            cfg2 = cfg.model_copy(update={"cameras": []})
            proc = spawn(write_toml(tmp_path / "drain.toml", cfg2), log)
            wait_until(lambda: outbox_numbers(db)[1] == 0, 30, "drain on restart", log)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        wait_until(lambda: store.max_seq() >= last_seq, 30, "store to catch up")
        time.sleep(1)
        with store.lock:
            got = dict(store.received)
        assert sorted(got) == list(range(1, last_seq + 1)), "a prediction was lost (gap in seq)"
        dupes = sum(n - 1 for n in got.values())
        print(
            f"\nreliability: {last_seq} predictions, {backlog_in_outage} waited out the outage, "
            f"{dupes} delivered twice (de-duplicated by seq), 0 lost"
        )
        assert dupes <= 200  # redelivery is bounded by what was in flight, not the backlog
        wait_until(lambda: store.statuses and store.statuses[-1].state == "offline", 15, "offline", log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()


def test_service_protocol_ready_watchdog_and_sigterm(tmp_path: Path, broker: EmbeddedBroker) -> None:
    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(30)
    cfg = edge_config(tmp_path, broker, [], make_tiny_package(tmp_path / "pkg"))
    conf = write_toml(tmp_path / "edge.toml", cfg)
    log = tmp_path / "daemon.log"
    store = Store(broker)
    proc = spawn(conf, log, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    try:
        got: list[str] = []
        while "WATCHDOG=1" not in got:
            got += srv.recv(4096).decode().splitlines()
        assert got[0] == "READY=1"
        wait_until(lambda: any(s.state == "online" for s in store.statuses), 10, "online status", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        wait_until(lambda: store.statuses[-1].state == "offline", 10, "offline status", log)
        assert store.statuses[-1].reason == "shutdown"
        while True:
            msg = srv.recv(4096).decode()
            if "STOPPING=1" in msg:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
        store.close()


def test_kill_9_leaves_the_last_will(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = edge_config(tmp_path, broker, [], None, mqtt={"keepalive": 5})
    conf = write_toml(tmp_path / "edge.toml", cfg)
    log = tmp_path / "daemon.log"
    store = Store(broker)
    proc = spawn(conf, log)
    try:
        wait_until(lambda: any(s.state == "online" for s in store.statuses), 20, "online status", log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: store.statuses[-1].state == "offline", 20, "last-will")
        assert store.statuses[-1].reason == "last-will"
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()
