"""``FleetIngest``: the component of ``parkwatch cloud serve`` that stores what the fleet sends.

Loss-free by construction, not by luck:

* a persistent MQTT 5 session (``clean_start=False`` plus a session expiry), so the broker
  queues for us while ingest restarts;
* manual acknowledgements: a message is PUBACKed only after it is committed (``synchronous=FULL``)
  to this worker's inbox (:mod:`cloud.fleet.inbox`); anything not yet acknowledged is resent;
* the inbox is turned into fleet rows by a materializer process (:mod:`cloud.fleet.materialize`)
  that validates, keys predictions by (device, seq) so a resend is stored once, and records seq
  jumps as gaps (:mod:`cloud.fleet.writer`).

Two stages because receiving is cheap and row-writing is not: acknowledging after the rows were
written held the broker's queue at a fraction of its delivery rate during a burst. The receiver
here only routes by topic and appends; see the inbox module for the numbers.

Predictions and telemetry come through a shared subscription so several workers (each with
its own ``client_id``) split the stream. Status and model state are subscribed without sharing:
they are retained, and MQTT 5 never sends retained messages to a shared subscription, so a fresh
worker would otherwise not know the fleet's current state. They are idempotent upserts, so every
worker storing them is harmless. Update request/response topics are left to the release channel.
"""

from __future__ import annotations

import collections
import functools
import logging
import multiprocessing as mp
import os
import threading
import time
from typing import IO, TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from cloud.fleet.errors import FleetError
from cloud.fleet.inbox import Inbox, hold_worker_lock, inbox_path
from cloud.fleet.materialize import SharedStats, process_main, reject_kind
from cloud.fleet.schema import connect
from cloud.fleet.snapshots import SnapshotQuota, store_snapshot
from shared.backoff import Backoff
from shared.mqttlink import MqttLink
from shared.protocol import (
    PREDICTION_SCHEMAS,
    TELEMETRY_SCHEMAS,
    CloudCapabilities,
    Kind,
    PayloadTooLarge,
    ProtocolError,
    Snapshot,
    Topics,
    decode,
    encode,
    parse_topic,
)
from shared.protocol.counter import RejectCounter

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.ingest")

STORED_KINDS = {Kind.PREDICTIONS, Kind.TELEMETRY, Kind.STATUS, Kind.MODEL_STATE}
_RESTART_BACKOFF_S = 2.0
_HEALTHY_RUN_S = 60.0

Received = tuple[str, bytes, float, bool, int, int]  # topic, payload, received_ts, retained, mid, qos


@functools.lru_cache(maxsize=65_536)
def _kind_of(topic: str) -> Kind:
    """parse_topic, cached: a fleet uses a few topics per box, and this runs for every message.
    (A refused topic raises, and exceptions are not cached, so it is refused every time.)"""
    return parse_topic(topic).kind


def subscriptions(share_group: str) -> list[tuple[str, int]]:
    return [
        (Topics.shared(share_group, Topics.ALL_PREDICTIONS), 1),
        (Topics.shared(share_group, Topics.ALL_TELEMETRY), 1),
        (Topics.ALL_STATUS, 1),
        (Topics.ALL_MODEL_STATE, 1),
        (Topics.shared(share_group, Topics.ALL_SNAPSHOTS), 1),
    ]


class FleetIngest:
    def __init__(self, cfg: CloudConfig, client_id: str | None = None, retiring: bool = False) -> None:
        self.cfg = cfg
        self.fcfg = cfg.fleet
        self.client_id = client_id or cfg.client_id("ingest")
        # Retiring: resume the session only to take what the broker queued for it, subscribed to
        # nothing new, then end it (see retire()).
        self.retiring = retiring
        self._end_session = False
        self.session_ended = False
        self._batch_pending = False  # a batch taken from the queue and not yet acknowledged
        self._worker_lock: IO[bytes] | None = None
        self.rejects = RejectCounter()  # refused before the inbox (unknown topic, too large)
        self.mstats = SharedStats()  # the materializer's figures
        # A deque and an Event rather than queue.Queue: two C-level operations per message instead
        # of a lock dance (a few percent of the receiver at full rate). The broker's receive_maximum
        # bounds how many unacknowledged messages can be waiting here.
        self._q: collections.deque[Received] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: MqttLink | None = None
        self._inbox: Inbox | None = None
        self._mp = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._next_restart = 0.0
        self._next_check = 0.0
        self._proc_started = 0.0
        self._backoff = _RESTART_BACKOFF_S / 2
        self._lock = threading.Lock()
        self.received = 0
        self.accepted = 0
        self.ignored = 0
        self.snapshots: dict[str, int] = {}
        self._snapshot_quota = SnapshotQuota(cfg.fleet.snapshot_quota_per_day)
        self.inbox_errors = 0
        self.materializer_restarts = 0
        self.last_error: str | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self._start()
        except BaseException:
            self.stop()  # nothing half-started is left running (materializer, inbox thread)
            raise

    def _start(self) -> None:
        # Open (and create) both databases before taking messages, so a bad path fails fast.
        connect(self.cfg.fleet_store, synchronous="FULL").close()
        path = inbox_path(self.cfg.paths, self.client_id)
        self._worker_lock = hold_worker_lock(path)
        self._inbox = Inbox(path)
        link = MqttLink(
            self.cfg.mqtt,
            self.client_id,
            clean_start=False,
            session_expiry_s=self.fcfg.session_expiry_s,
            receive_maximum=self.fcfg.receive_maximum,
            manual_ack=True,
            on_message=self._on_message,
            waiting="the broker keeps our queue",
            logger=log,
        )
        filters = subscriptions(self.fcfg.share_group)
        if self.retiring:
            # The queued messages come anyway (they belong to the session); unsubscribing first
            # means no new ones are routed here, so the other workers of the group take them.
            link.forget_on_connect([t for t, _ in filters])
        else:
            for topic, qos in filters:
                link.subscribe(topic, qos=qos)
            link.on_connection_change(self._on_connection)
        self._stop.clear()
        self.mstats.set("stop", 0)
        self._start_materializer()
        self._thread = threading.Thread(target=self._writer_loop, name="fleet-ingest-inbox", daemon=True)
        self._thread.start()
        self._link = link
        try:
            link.start()
        except (OSError, ValueError) as e:
            raise FleetError(
                f"cannot reach the broker at {self.cfg.mqtt.host}:{self.cfg.mqtt.port}: {e}"
            ) from e

    def stop(self) -> None:
        """Stop taking messages, make what is queued durable and acknowledge it, then disconnect.

        The materializer gets a few seconds to drain the inbox; what it leaves is applied when
        this worker (same ``client_id``) starts again.
        """
        link = self._link
        if link is not None:
            link.client.on_message = lambda *a: None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if link is not None:
            # Only with nothing unacknowledged here: ending the session discards what the broker
            # still holds for it, and a batch not yet acknowledged is exactly that.
            end = self._end_session and not self._batch_pending and not self._q
            link.stop()
            self._link = None
            if end:
                self.session_ended = self._discard_session()
        self.mstats.set("stop", 1)
        if self._proc is not None:
            self._proc.join(timeout=60)
            if self._proc.is_alive():
                log.error("materializer did not stop in time; terminating it (the inbox keeps its rows)")
                self._proc.terminate()
                self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=10)
            self._proc = None
        if self._inbox is not None:
            self._inbox.close()
            self._inbox = None
        if self._worker_lock is not None:
            self._worker_lock.close()  # releases the lock
            self._worker_lock = None

    def _discard_session(self) -> bool:
        """End this client_id's broker session: a clean start throws it away, and an expiry of 0
        keeps none after. Confirmed by the CONNACK, not assumed from a DISCONNECT that a closing
        socket may not have carried."""
        link = MqttLink(self.cfg.mqtt, self.client_id, clean_start=True, session_expiry_s=0, logger=log)
        try:
            link.start(connect_now=True)
        except (OSError, ValueError):
            return False
        try:
            return link.wait_connected(10)
        finally:
            link.stop()

    def retire(self, quiet_s: float = 2.0, timeout_s: float = 600.0) -> dict[str, Any]:
        """Take in what the broker still holds for this worker, apply it, and end its session.

        A stopped worker's persistent session keeps its share of the shared subscription queued
        in the broker (for ``fleet.session_expiry_s``), where no other worker and no ``--drain``
        can reach it. Retiring hands that share back: start with ``retiring=True``, then call this.
        Returns the figures; raises :class:`FleetError` if the broker or the backlog did not
        settle in ``timeout_s`` (the session is then kept, so nothing is lost).
        """
        if not self.retiring:
            raise FleetError("retire() needs FleetIngest(..., retiring=True)")
        deadline = time.monotonic() + timeout_s
        if not self.wait_connected(min(30.0, timeout_s)):
            raise FleetError(
                f"cannot retire {self.client_id}: no connection to the broker at "
                f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}"
            )
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            busy = self._q or self._batch_pending or not self.connected
            if self.received != last or busy:
                last, quiet_since = self.received, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s and self.inbox_backlog() == 0:
                self._end_session = True
                received = self.received
                self.stop()
                if not self.session_ended:
                    raise FleetError(
                        f"cannot retire {self.client_id}: the broker connection dropped at the last "
                        "step; its session is kept (nothing lost), run it again"
                    )
                return {"worker": self.client_id, "received": received, "session": "ended"}
            time.sleep(0.1)
        self.stop()
        raise FleetError(
            f"cannot retire {self.client_id}: messages still arriving or waiting in its inbox after "
            f"{timeout_s:.0f} s; its session is kept, run it again"
        )

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Until connected and subscribed (SUBACK received; UNSUBACK when retiring)."""
        link = self._link
        return link is not None and link.wait_ready(timeout)

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.ready

    def inbox_backlog(self) -> int:
        """Messages acknowledged to the broker but not yet in the fleet tables."""
        inbox = self._inbox
        return inbox.backlog() if inbox is not None else 0

    def stats(self) -> dict[str, Any]:
        m = self.mstats
        rejected = m.counts("rx")
        for k, v in m.counts("rejected").items():
            rejected[k] = rejected.get(k, 0) + v
        last_write = m.get("last_write_ts")
        beat = m.get("heartbeat_ts")
        return {
            "connected": self.connected,
            "client_id": self.client_id,
            "received": self.received,
            "accepted": self.accepted,
            "ignored": self.ignored,
            "rejected": rejected,
            "inbox_backlog": self.inbox_backlog(),
            "stored_predictions": int(m.get("stored_predictions")),
            "duplicates": int(m.get("duplicates")),
            "snapshots": dict(self.snapshots),
            "batches": int(m.get("batches")),
            "queue": len(self._q),
            "write_errors": self.inbox_errors + int(m.get("write_errors")),
            "materializer_alive": self._proc is not None and self._proc.is_alive(),
            "materializer_restarts": self.materializer_restarts,
            # A live process whose heartbeat is old is stuck (a long lock wait, a bug): see its log.
            "materializer_heartbeat_age_s": round(time.time() - beat, 1) if beat else None,
            "last_error": (self._link.last_error if self._link is not None else None) or self.last_error,
            "last_write_ts": last_write or None,
        }

    # materializer process ------------------------------------------------------------------
    def _start_materializer(self) -> None:
        p = self._mp.Process(
            target=process_main,
            args=(
                self.cfg,
                self.client_id,
                self.mstats.arr,
                logging.getLogger().getEffectiveLevel(),
                os.getpid(),
            ),
            name=f"parkwatch-materialize-{self.client_id}",
            daemon=True,
        )
        p.start()
        self._proc = p
        self._proc_started = time.monotonic()

    def _supervise(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return  # called after every batch: a waitpid a few times a second is enough
        self._next_check = now + 0.25
        p = self._proc
        if p is None or p.is_alive() or self._stop.is_set() or self.mstats.get("stop"):
            return  # while stopping, an exit is expected (systemd signals the whole group)
        now = time.monotonic()
        if now < self._next_restart:
            return
        # Back off while it keeps dying at start-up (fleet.db unreadable, say); a crash after a long
        # healthy run is restarted at once.
        lived = now - self._proc_started
        self._backoff = _RESTART_BACKOFF_S if lived > _HEALTHY_RUN_S else min(self._backoff * 2, 60.0)
        self.materializer_restarts += 1
        self.last_error = (
            f"materializer exited with status {p.exitcode} after {lived:.0f} s; restarted (the inbox kept "
            "its rows; its own error is in the log above)"
        )
        log.error("%s", self.last_error)
        self._next_restart = now + self._backoff
        self._start_materializer()

    # MQTT callbacks (paho's network thread) ------------------------------------------------
    def _on_connection(self, up: bool) -> None:
        link = self._link
        if up and link is not None:
            # Retained, so every box (now or later) learns which prediction schemas this cloud
            # stores; a box that never sees it sends schema 1, which every cloud accepts.
            caps = CloudCapabilities(predictions=list(PREDICTION_SCHEMAS), telemetry=list(TELEMETRY_SCHEMAS))
            link.publish(Topics.CAPABILITIES, encode(caps), qos=1, retain=True)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Route by topic only; everything that needs the payload parsed is the materializer's."""
        self.received += 1
        topic = msg.topic
        payload = bytes(msg.payload)  # already bytes from paho (bytes() returns it as is); typed for mypy
        try:
            kind = _kind_of(topic)
            if len(payload) > self.cfg.mqtt.max_payload_bytes:
                raise PayloadTooLarge(
                    f"{topic}: payload of {len(payload)} bytes exceeds {self.cfg.mqtt.max_payload_bytes}"
                )
        except ProtocolError as e:
            self._reject(e)
            client.ack(msg.mid, msg.qos)  # rejected for good: a resend would be rejected again
            return
        if kind in STORED_KINDS:
            self._q.append((topic, payload, time.time(), msg.retain, msg.mid, msg.qos))
            if not self._wake.is_set():
                self._wake.set()
        elif kind is Kind.SNAPSHOT:
            self._snapshot(topic, payload)
            client.ack(msg.mid, msg.qos)
        else:
            self.ignored += 1
            client.ack(msg.mid, msg.qos)

    def _reject(self, e: ProtocolError) -> None:
        self.rejects.reject(e)  # logs the first of each kind
        self.mstats.add(f"rx.{reject_kind(e.kind)}")  # the materializer persists the count

    def _snapshot(self, topic: str, payload: bytes) -> None:
        """Snapshots are rare and go to files, not rows: handled here, whole."""
        outcome: str
        try:
            _, snap = decode(topic, payload, self.cfg.mqtt.max_payload_bytes)
            assert isinstance(snap, Snapshot)
            outcome = store_snapshot(self.cfg, snap, self._snapshot_quota)
        except ProtocolError as e:
            self._reject(e)
            return
        except OSError as e:
            outcome = "write_error"
            self.last_error = f"cannot keep a snapshot from {topic}: {e}"
            log.error("%s", self.last_error)
        with self._lock:
            self.snapshots[outcome] = self.snapshots.get(outcome, 0) + 1

    # inbox thread --------------------------------------------------------------------------
    def _collect(self) -> list[Received]:
        """Group commit: whatever arrived while the last commit was being fsynced, without waiting
        for more. Under load the fsync itself makes the batches; when quiet, each message is
        committed and acknowledged at once."""
        q = self._q
        batch: list[Received] = []
        self._wake.clear()  # before draining: an append after this sets it again, none is missed
        if q:
            self._batch_pending = True  # before taking: _q and this flag never both look idle
        while len(batch) < self.fcfg.batch_max:
            try:
                batch.append(q.popleft())
            except IndexError:
                break
        if not batch:
            self._wake.wait(0.25)
        return batch

    def _writer_loop(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                self._supervise()
                if self._stop.is_set() and not self._q:
                    break
                continue
            self._append_until_done(batch)
            self._supervise()

    def _append_until_done(self, batch: list[Received]) -> None:
        inbox = self._inbox
        assert inbox is not None
        backoff = Backoff(0.5, 30.0)
        rows = [(t, p, ts, r) for t, p, ts, r, _, _ in batch]
        while True:
            try:
                inbox.append(rows)
                break
            except FleetError as e:
                # Keep the batch unacknowledged and retry: the broker holds everything behind it.
                self.inbox_errors += 1
                self.last_error = str(e)
                delay = backoff.next()
                log.error("%s; retrying in %.1f s", e, delay)
                if self._stop.wait(delay):
                    return  # stopping: unacknowledged, so the broker resends it to the next run
        link = self._link
        if link is not None:
            for *_, mid, qos in batch:
                link.ack(mid, qos)
        self.accepted += len(batch)
        self._batch_pending = False
        self.mstats.set("rx_batch", len(batch))  # the materializer yields while these are large
        self.mstats.set("rx_ts", time.time())
