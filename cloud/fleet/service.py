"""``FleetIngest``: the component of ``parkwatch cloud serve`` that stores what the fleet sends.

Loss-free by construction, not by luck:

* a persistent MQTT 5 session (``clean_start=False`` plus a session expiry), so the broker
  queues for us while ingest restarts;
* manual acknowledgements: a message is PUBACKed only after the SQLite transaction holding it
  committed with ``synchronous=FULL``; anything not yet acknowledged is resent by the broker;
* predictions are keyed by (device, seq), so a resend is stored once, and seq jumps are
  recorded as gaps (see :mod:`cloud.fleet.writer`).

Predictions and telemetry come through a shared subscription so several workers (each with
its own ``client_id``) split the stream. Status and model state are subscribed without sharing:
they are retained, and MQTT 5 never sends retained messages to a shared subscription, so a fresh
worker would otherwise not know the fleet's current state. They are idempotent upserts, so every
worker storing them is harmless. Update request/response topics are left to the release channel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.fleet.errors import FleetError
from cloud.fleet.schema import connect
from cloud.fleet.snapshots import store_snapshot
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import BatchWriter, Incoming
from shared.mqtt import make_client
from shared.protocol import Kind, ProtocolError, Snapshot, Topics, decode
from shared.protocol.counter import RejectCounter

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.ingest")

STORED_KINDS = {Kind.PREDICTIONS, Kind.TELEMETRY, Kind.STATUS, Kind.MODEL_STATE}
_IDLE_S = 0.02  # stop filling a batch when nothing arrived for this long


def subscriptions(share_group: str) -> list[tuple[str, int]]:
    return [
        (Topics.shared(share_group, Topics.ALL_PREDICTIONS), 1),
        (Topics.shared(share_group, Topics.ALL_TELEMETRY), 1),
        (Topics.ALL_STATUS, 1),
        (Topics.ALL_MODEL_STATE, 1),
        (Topics.shared(share_group, Topics.ALL_SNAPSHOTS), 1),
    ]


class FleetIngest:
    def __init__(self, cfg: CloudConfig, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.fcfg = cfg.fleet
        self.client_id = client_id or self.fcfg.client_id
        self.rejects = RejectCounter()
        self._q: queue.Queue[tuple[Incoming, int, int]] = queue.Queue(maxsize=self.fcfg.queue_max)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._flushed_rejects: dict[str, int] = {}
        self.received = 0
        self.ignored = 0
        self.stored_predictions = 0
        self.duplicates = 0
        self.snapshots: dict[str, int] = {}
        self.batches = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.last_write_ts: float | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        # Open (and create) the database before taking messages, so a bad path fails fast.
        db = connect(self.cfg.fleet_db, synchronous="FULL")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._writer_loop, args=(db,), name="fleet-ingest-writer", daemon=True
        )
        self._thread.start()
        c = make_client(self.cfg.mqtt, self.client_id, manual_ack=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.fcfg.session_expiry_s
        props.ReceiveMaximum = self.fcfg.receive_maximum
        self._client = c
        try:
            c.connect_async(
                self.cfg.mqtt.host,
                self.cfg.mqtt.port,
                keepalive=self.cfg.mqtt.keepalive,
                clean_start=False,
                properties=props,
            )
        except (OSError, ValueError) as e:
            self.stop()
            raise FleetError(
                f"cannot reach the broker at {self.cfg.mqtt.host}:{self.cfg.mqtt.port}: {e}"
            ) from e
        c.loop_start()

    def stop(self) -> None:
        """Stop taking messages, write and acknowledge what is queued, then disconnect."""
        c = self._client
        if c is not None:
            c.on_message = lambda *a: None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if c is not None:
            c.disconnect()
            c.loop_stop()
            self._client = None
        self._connected.clear()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Until connected and subscribed (SUBACK received)."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "client_id": self.client_id,
            "received": self.received,
            "ignored": self.ignored,
            "rejected": self.rejects.snapshot(),
            "stored_predictions": self.stored_predictions,
            "duplicates": self.duplicates,
            "snapshots": dict(self.snapshots),
            "batches": self.batches,
            "queue": self._q.qsize(),
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "last_write_ts": self.last_write_ts,
        }

    # MQTT callbacks (paho's network thread) ------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            log.error("%s", self.last_error)
            return
        client.subscribe(subscriptions(self.fcfg.share_group))
        log.info("ingest connected as %s (session present: %s)", self.client_id, flags.session_present)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None
    ) -> None:
        bad = [rc for rc in rcs if rc.is_failure]
        if bad:
            self.last_error = (
                f"broker refused a subscription: {bad}; check the broker ACL for the ingest account"
            )
            log.error("%s", self.last_error)
        self._connected.set()  # connected *and* subscribed: nothing published from now on is missed

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest lost the broker (%s); paho reconnects, the broker keeps our queue", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.time()
        self.received += 1
        try:
            parsed, decoded = decode(msg.topic, msg.payload, self.cfg.mqtt.max_payload_bytes)
        except ProtocolError as e:
            self.rejects.reject(e)
            client.ack(msg.mid, msg.qos)  # rejected for good: a resend would be rejected again
            return
        except Exception as e:  # a bug in a validator must not kill the network thread
            log.exception("unexpected error decoding %s", msg.topic)
            self.rejects.reject(ProtocolError(f"{msg.topic}: {e}"))
            client.ack(msg.mid, msg.qos)
            return
        if isinstance(decoded, Snapshot):
            self._snapshot(decoded)
            client.ack(msg.mid, msg.qos)
            return
        if parsed.kind not in STORED_KINDS:
            self.ignored += 1
            client.ack(msg.mid, msg.qos)
            return
        self._q.put((Incoming(parsed, decoded, received), msg.mid, msg.qos))

    def _snapshot(self, snap: Snapshot) -> None:
        outcome: str
        try:
            outcome = store_snapshot(self.cfg, snap)
        except OSError as e:
            outcome = "write_error"
            self.last_error = f"cannot keep snapshot {snap.id}: {e}"
            log.error("%s", self.last_error)
        with self._lock:
            self.snapshots[outcome] = self.snapshots.get(outcome, 0) + 1

    # writer thread -------------------------------------------------------------------------
    def _collect(self) -> list[tuple[Incoming, int, int]]:
        try:
            first = self._q.get(timeout=0.25)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.fcfg.batch_interval_s
        while len(batch) < self.fcfg.batch_max:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._q.get(timeout=min(remaining, _IDLE_S)))
            except queue.Empty:
                break
        return batch

    def _writer_loop(self, db: Any) -> None:
        writer = BatchWriter(db)
        store = FleetStore.__new__(FleetStore)  # share the writer's connection for retention
        store.path, store.db, store._lock = self.cfg.fleet_db, db, threading.RLock()
        next_prune = time.monotonic()
        try:
            while True:
                batch = self._collect()
                if not batch:
                    self._flush_counters(writer)
                    if self._stop.is_set() and self._q.empty():
                        break
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + self.fcfg.retention_interval_s
                        self._prune(store)
                    continue
                self._write_until_done(writer, batch)
        finally:
            db.close()

    def _write_until_done(self, writer: BatchWriter, batch: list[tuple[Incoming, int, int]]) -> None:
        delay = 0.5
        while True:
            try:
                res = writer.write([b[0] for b in batch], self._counter_deltas())
                break
            except FleetError as e:
                # Keep the batch unacknowledged and retry: the broker holds everything behind it.
                self.write_errors += 1
                self.last_error = str(e)
                log.error("%s; retrying in %.1f s", e, delay)
                if self._stop.wait(delay) and self._client is None:
                    return
                delay = min(delay * 2, 30.0)
        self._commit_counters()
        c = self._client
        if c is not None:
            for _, mid, qos in batch:
                c.ack(mid, qos)
        self.batches += 1
        self.stored_predictions += res.predictions_stored
        self.duplicates += res.duplicates
        self.last_write_ts = time.time()
        for device, first, last in res.gaps_opened:
            # INFO, not WARNING: with several workers or a resending outbox most gaps close within
            # moments; the health check reports the ones that last (fleet.gap_grace_s).
            log.info("gap: device %s is missing seq %d..%d", device, first, last)

    def _counter_deltas(self) -> dict[str, int]:
        snap = self.rejects.snapshot()
        self._pending = {f"rejected.{k}": v - self._flushed_rejects.get(k, 0) for k, v in snap.items()}
        self._pending_snap = snap
        return self._pending

    def _commit_counters(self) -> None:
        self._flushed_rejects = dict(self._pending_snap)

    def _flush_counters(self, writer: BatchWriter) -> None:
        deltas = self._counter_deltas()
        if any(deltas.values()):
            try:
                writer.write([], deltas)
                self._commit_counters()
            except FleetError as e:
                self.last_error = str(e)

    def _prune(self, store: FleetStore) -> None:
        try:
            out = store.prune(time.time() - self.fcfg.retention_days * 86400)
            if any(out.values()):
                log.info("retention removed %s", out)
        except FleetError as e:
            self.last_error = str(e)
            log.error("%s", e)
