"""Moves predictions from the outbox to the broker in QoS-1 batches; deletes on PUBACK only.

Why batches: one MQTT message per prediction costs a round trip each; a :class:`PredictionBatch`
of up to ``[outbox] batch_size`` rows costs one. Rows are read in seq order after the highest
seq already handed to paho, so nothing is sent twice by this process; paho itself resends an
unacknowledged batch after a reconnect, and after a restart the outbox still holds every row
that was not acknowledged, so the cloud sees each seq at least once and de-duplicates by seq.

PUBACKs are only queued on paho's network thread and handled on the publisher's own thread:
paho calls ``on_publish`` holding its outgoing-message lock, so taking any lock there that a
thread calling ``publish`` may hold deadlocks both (seen under a burst after a reconnect).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from edge.errors import OutboxError
from edge.mqttlink import MqttLink
from edge.outbox import Outbox
from shared.protocol import Kind, Prediction, PredictionBatch, Topics, encode

log = logging.getLogger("parkwatch.edge.publisher")

RESEND_AFTER_S = 120.0


@dataclass
class _InFlight:
    first: int
    last: int
    sent_mono: float
    frame_ts: list[float]


class Publisher:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        batch_size: int = 200,
        flush_interval_s: float = 0.5,
        max_inflight_batches: int = 20,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.topic = Topics.device(link.site, link.device, Kind.PREDICTIONS)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_inflight = max_inflight_batches
        self._inflight: dict[int, _InFlight] = {}
        self._sent_upto = 0
        self._new_rows = 0
        self._kick = False  # pump at the next wake-up, not at the next tick
        self._lock = threading.Lock()  # guards _inflight/_sent_upto for readers on other threads
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches_sent = 0
        self.batches_acked = 0
        self.errors = 0
        self.unsendable = 0
        # wall-clock seconds from frame capture to the broker's PUBACK, most recent first
        self.ack_latency_s: deque[float] = deque(maxlen=2048)
        link.on_ack(self._on_ack)
        link.on_connection_change(self._on_conn)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def notify(self, rows: int = 1) -> None:
        """``rows`` new rows are in the outbox. A full batch is sent at once; anything less waits
        for the next flush tick, so a busy box sends a few large messages, not one per frame
        (each message costs CPU on the box and on the broker)."""
        self._new_rows += rows
        if self._new_rows >= self.batch_size:
            self._wake.set()

    def stop(self, drain_timeout_s: float = 3.0) -> None:
        """Try to get what is pending acknowledged, then stop; whatever is left stays in the outbox."""
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and self.link.connected:
            with self._lock:
                idle = not self._inflight and self._sent_upto >= self.outbox.last_seq
            if idle:
                break
            self._kick = True
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(5)

    @property
    def inflight(self) -> int:
        with self._lock:
            return sum(f.last - f.first + 1 for f in self._inflight.values())

    def ack_latency_percentiles(self) -> dict[str, float]:
        """Frame capture to broker PUBACK, in ms (what "frame-to-publish" means for the cloud)."""
        if not self.ack_latency_s:
            return {}
        import numpy as np

        arr = np.fromiter(list(self.ack_latency_s), dtype=np.float64) * 1000
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}

    # -- internals --------------------------------------------------------------------------------
    def _on_conn(self, up: bool) -> None:
        if up:
            self._kick = True
            self._wake.set()

    def _on_ack(self, mid: int) -> None:
        # paho's thread, paho's lock held: only hand over, never block here
        self._acks.put(mid)
        self._wake.set()

    def _handle_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                f = self._inflight.pop(mid, None)
            if f is None:
                continue  # status, telemetry or model-state messages share the client
            try:
                self.outbox.ack(f.first, f.last)
            except OutboxError:
                self.errors += 1  # rows stay and are resent later: a duplicate, never a loss
            self.batches_acked += 1
            now = time.time()
            self.ack_latency_s.extend(now - t for t in f.frame_ts)

    def _run(self) -> None:
        next_flush = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_flush - time.monotonic()))
            self._wake.clear()
            try:
                self._handle_acks()
                now = time.monotonic()
                if now >= next_flush or self._new_rows >= self.batch_size or self._kick:
                    self._kick = False
                    self._new_rows = 0
                    self._pump()
                    next_flush = now + self.flush_interval_s
            except Exception:
                self.errors += 1
                log.exception("publisher step failed; retrying in %.1f s", self.flush_interval_s)
                time.sleep(self.flush_interval_s)

    def _pump(self) -> None:
        if not self.link.connected:
            return
        self._resend_stuck()
        while not self._stop.is_set() and self.link.connected:
            with self._lock:
                if len(self._inflight) >= self.max_inflight:
                    self._kick = True  # a backlog: continue as soon as acks free the window
                    return
                after = self._sent_upto
            rows = self.outbox.pending(after, self.batch_size)
            if not rows:
                return
            preds = self._valid(rows)
            if not preds:
                continue
            batch = PredictionBatch.for_cloud(  # schema 2 only if the cloud accepts it
                self.link.device,
                self.link.site,
                preds,
                self.link.cloud_prediction_schemas,
                evicted_total=self.outbox.evicted_total,
            )
            # Acks are handled on this thread, so one cannot overtake the record below.
            info = self.link.publish(self.topic, encode(batch), qos=1)
            with self._lock:
                self._inflight[info.mid] = _InFlight(
                    rows[0][0], rows[-1][0], time.monotonic(), [p.frame_ts or p.ts for p in preds]
                )
                self._sent_upto = rows[-1][0]
            self.batches_sent += 1

    def _valid(self, rows: list[tuple[int, dict[str, Any]]]) -> list[Prediction]:
        """Rows that fit the wire schema. A row that does not (a bug, or a row from an older
        build) would block the queue forever: it is removed, counted and logged instead."""
        out: list[Prediction] = []
        for seq, body in rows:
            try:
                out.append(Prediction.model_validate(body))
            except ValidationError as e:
                self.unsendable += 1
                log.error("outbox row seq %d does not fit the protocol and is dropped: %s", seq, e)
                self.outbox.ack(seq, seq)
        return out

    def _resend_stuck(self) -> None:
        """A batch paho never got acknowledged (broker dropped it): rewind so it is sent again."""
        now = time.monotonic()
        with self._lock:
            stuck = [m for m, f in self._inflight.items() if now - f.sent_mono > RESEND_AFTER_S]
            if not stuck:
                return
            first = min(self._inflight[m].first for m in stuck)
            for m in stuck:
                del self._inflight[m]
            self._sent_upto = min(self._sent_upto, first - 1)
        log.warning(
            "%d batch(es) unacknowledged for %.0f s; sending again from seq %d",
            len(stuck),
            RESEND_AFTER_S,
            first,
        )
