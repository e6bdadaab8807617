"""The receiver of an ingest worker: MQTT into the durable inbox, then the acknowledgement.

Loss-free by construction, not by luck:

* a persistent MQTT 5 session (``clean_start=False`` plus a session expiry), so the broker
  queues for us while ingest restarts;
* manual acknowledgements: a message is PUBACKed only after it is committed (``synchronous=FULL``)
  to this worker's inbox (:mod:`cloud.fleet.inbox`); anything not yet acknowledged is resent;
* the inbox is turned into fleet rows by the worker's materializer, a process of its own
  (:mod:`cloud.fleet.materialize`, ``parkwatch cloud materialize``) that validates, keys
  predictions by (device, seq) so a resend is stored once, and records seq jumps as gaps.

Two stages because receiving is cheap and row-writing is not: acknowledging after the rows were
written held the broker's queue at a fraction of its delivery rate during a burst. The receiver
here only routes by topic and appends; see the inbox module for the numbers. It never writes to
the fleet store: even its refusals (unknown topic, too large) go to the inbox as small rows that
the materializer counts.

Predictions and telemetry come through a shared subscription so several workers (each with
its own ``client_id``) split the stream. Status and model state are subscribed without sharing:
they are retained, and MQTT 5 never sends retained messages to a shared subscription, so a fresh
worker would otherwise not know the fleet's current state. They are idempotent upserts, so every
worker storing them is harmless. Update request/response topics are left to the release channel.
Taking a worker out of service for good is :mod:`cloud.fleet.retire`.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from typing import IO, TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from cloud.fleet.errors import FleetError
from cloud.fleet.inbox import REJECTED_PREFIX, Inbox, hold_worker_lock, inbox_path, reject_kind, rejection_row
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


class Receiver:
    """The ``fleet-ingest`` part of ``parkwatch cloud serve``: one worker's MQTT session and inbox."""

    def __init__(self, cfg: CloudConfig, client_id: str | None = None, retiring: bool = False) -> None:
        self.cfg = cfg
        self.fcfg = cfg.fleet
        self.client_id = client_id or cfg.client_id("ingest")
        # Retiring: resume the session only to take what the broker queued for it, subscribed to
        # nothing new (cloud/fleet/retire.py ends the session after).
        self.retiring = retiring
        self.stopped_clean = False  # the last stop() left nothing taken and unacknowledged
        self._batch_pending = False  # a batch taken from the queue and not yet acknowledged
        self._worker_lock: IO[bytes] | None = None
        self.rejects = RejectCounter()  # refused before the inbox (unknown topic, too large)
        # A deque and an Event rather than queue.Queue: two C-level operations per message instead
        # of a lock dance (a few percent of the receiver at full rate). The broker's receive_maximum
        # bounds how many unacknowledged messages can be waiting here.
        self._q: collections.deque[Received] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: MqttLink | None = None
        self._inbox: Inbox | None = None
        self._lock = threading.Lock()
        self.received = 0
        self.accepted = 0
        self.ignored = 0
        self.snapshots: dict[str, int] = {}
        self._snapshot_quota = SnapshotQuota(cfg.fleet.snapshot_quota_per_day)
        self.inbox_errors = 0
        self.last_error: str | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self._start()
        except BaseException:
            self.stop()  # nothing half-started is left running (inbox thread, MQTT loop)
            raise

    def _start(self) -> None:
        # The inbox is this part's only database (the materializer owns the fleet store): open it
        # before taking messages, so a bad path fails fast.
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

        What is in the inbox stays there for the materializer (running, or the next one started).
        """
        link = self._link
        if link is not None:
            link.client.on_message = lambda *a: None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        # Only with nothing unacknowledged may the session be ended after (retire): ending it
        # discards what the broker still holds for it, and a batch not yet acknowledged is that.
        self.stopped_clean = not self._batch_pending and not self._q
        if link is not None:
            link.stop()
            self._link = None
        if self._inbox is not None:
            self._inbox.close()
            self._inbox = None
        if self._worker_lock is not None:
            self._worker_lock.close()  # releases the lock
            self._worker_lock = None

    @property
    def busy(self) -> bool:
        """Messages taken from the broker and not yet committed and acknowledged."""
        return bool(self._q) or self._batch_pending

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
        """This receiver's figures since it started; the materializer's are in the fleet store
        (:mod:`cloud.fleet.materializer_stats`)."""
        return {
            "connected": self.connected,
            "client_id": self.client_id,
            "received": self.received,
            "accepted": self.accepted,
            "ignored": self.ignored,
            "rejected": self.rejects.snapshot(),
            "inbox_backlog": self.inbox_backlog(),
            "snapshots": dict(self.snapshots),
            "queue": len(self._q),
            "write_errors": self.inbox_errors,
            "last_error": (self._link.last_error if self._link is not None else None) or self.last_error,
        }

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
            self._reject(e, msg)  # rejected for good: a resend would be rejected again
            return
        if kind in STORED_KINDS:
            self._enqueue((topic, payload, time.time(), msg.retain, msg.mid, msg.qos))
        elif kind is Kind.SNAPSHOT:
            err = self._snapshot(topic, payload)
            if err is None:
                client.ack(msg.mid, msg.qos)
            else:
                self._reject(err, msg)
        else:
            self.ignored += 1
            client.ack(msg.mid, msg.qos)

    def _enqueue(self, item: Received) -> None:
        self._q.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def _reject(self, e: ProtocolError, msg: mqtt.MQTTMessage) -> None:
        """Count and log it here; acknowledge it once its refusal row is in the inbox, from where
        the materializer counts it in the fleet store (exactly once, like any other row)."""
        self.rejects.reject(e)  # logs the first of each kind
        topic, payload, ts, retained = rejection_row(reject_kind(e.kind), str(e), time.time())
        self._enqueue((topic, payload, ts, retained, msg.mid, msg.qos))

    def _snapshot(self, topic: str, payload: bytes) -> ProtocolError | None:
        """Snapshots are rare and go to files, not rows: handled here, whole. Returns why it was
        refused, if it was."""
        outcome: str
        try:
            _, snap = decode(topic, payload, self.cfg.mqtt.max_payload_bytes)
            assert isinstance(snap, Snapshot)
            outcome = store_snapshot(self.cfg, snap, self._snapshot_quota)
        except ProtocolError as e:
            return e
        except OSError as e:
            outcome = "write_error"
            self.last_error = f"cannot keep a snapshot from {topic}: {e}"
            log.error("%s", self.last_error)
        with self._lock:
            self.snapshots[outcome] = self.snapshots.get(outcome, 0) + 1
        return None

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
                if self._stop.is_set() and not self._q:
                    break
                continue
            self._append_until_done(batch)

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
        self.accepted += sum(1 for t, *_ in batch if not t.startswith(REJECTED_PREFIX))
        self._batch_pending = False
