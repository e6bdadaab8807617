"""Moves predictions from the outbox to the broker in QoS-1 batches; deletes on PUBACK only.

Why batches: one MQTT message per prediction costs a round trip each; a :class:`PredictionBatch`
of up to ``[outbox] batch_size`` rows costs one. Rows are read in seq order after the highest
seq already handed to paho, so nothing is sent twice by this process; paho itself resends an
unacknowledged batch after a reconnect, and after a restart the outbox still holds every row
that was not acknowledged, so the cloud sees each seq at least once and de-duplicates by seq.

A PUBACK is not always a delivery: with reason code 16 ("no matching subscribers", a fresh install
before the cloud subscribed, a broker restarted before ingest resubscribed) the broker has thrown
the batch away. Its rows stay in the outbox and the publisher holds off, retrying with one probe
batch at a time and a doubling back-off (:data:`BACKOFF_MIN_S` to :data:`BACKOFF_MAX_S`) until a
PUBACK says someone got it; :meth:`Publisher.undelivered` tells the status page why rows wait.

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
from edge.mqttlink import NO_MATCHING_SUBSCRIBERS, MqttLink
from edge.outbox import Outbox
from shared.backoff import Backoff
from shared.protocol import Kind, Prediction, PredictionBatch, Topics, encode

log = logging.getLogger("parkwatch.edge.publisher")

RESEND_AFTER_S = 120.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0


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
        self._acks: queue.SimpleQueue[tuple[int, int, str]] = queue.SimpleQueue()  # mid, code, text
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches_sent = 0
        self.batches_acked = 0
        self.errors = 0
        self.unsendable = 0
        self.not_delivered = 0  # batches the broker took but delivered to nobody (kept, resent)
        self._backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        self._retry_at: float | None = None  # monotonic; no new batch before it
        self._refused_since: float | None = None  # wall clock of the first refusal in this episode
        self._refused_reason: str | None = None
        self._refused_code = 0
        # wall-clock seconds from frame capture to the broker's PUBACK, most recent first
        self.ack_latency_s: deque[float] = deque(maxlen=2048)
        link.on_ack(self._on_ack)
        link.on_refused(self._on_refused)
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

    def undelivered(self) -> dict[str, Any] | None:
        """Why rows wait although the broker is connected, or None: the broker answered that
        nobody receives predictions (or refused them), so they are kept and retried later."""
        since, reason, retry_at = self._refused_since, self._refused_reason, self._retry_at
        if since is None:
            return None
        return {
            "reason": reason,
            "no_subscriber": self._refused_code == NO_MATCHING_SUBSCRIBERS,
            "since_ts": since,
            "retry_in_s": round(max(0.0, retry_at - time.monotonic()), 1) if retry_at else 0.0,
            "batches_not_delivered": self.not_delivered,
        }

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
        self._acks.put((mid, 0, ""))
        self._wake.set()

    def _on_refused(self, mid: int, code: int, text: str) -> None:
        self._acks.put((mid, code, text))  # same thread rule as _on_ack
        self._wake.set()

    def _handle_acks(self) -> None:
        while True:
            try:
                mid, code, text = self._acks.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                f = self._inflight.pop(mid, None)
                if f is not None and code:
                    self._sent_upto = min(self._sent_upto, f.first - 1)  # send these rows again
            if f is None:
                continue  # status, telemetry or model-state messages share the client
            if code:
                self._hold_off(f, code, text)
                continue
            if self._refused_since is not None:
                log.info("broker delivers predictions again; sending the %d waiting", self.outbox.backlog)
                self._refused_since = self._refused_reason = self._retry_at = None
                self._refused_code = 0
                self._backoff.reset()
            try:
                self.outbox.ack(f.first, f.last)
            except OutboxError:
                self.errors += 1  # rows stay and are resent later: a duplicate, never a loss
            self.batches_acked += 1
            now = time.time()
            self.ack_latency_s.extend(now - t for t in f.frame_ts)

    def _hold_off(self, f: _InFlight, code: int, text: str) -> None:
        """The broker took batch ``f`` but delivered it to nobody: keep its rows, send nothing
        new until the back-off ends, then probe with one batch. One doubling per episode step,
        not per refused batch (a full window of refusals arrives at once)."""
        self.not_delivered += 1
        now = time.monotonic()
        if self._retry_at is not None and now < self._retry_at:
            return
        self._retry_at = now + self._backoff.next()
        first_time = self._refused_since is None
        if first_time:
            self._refused_since = time.time()
        self._refused_code = code
        self._refused_reason = (
            text.lower() if code == NO_MATCHING_SUBSCRIBERS else f"refused: {text} ({code})"
        )
        what = (
            "broker has no subscriber for predictions (is the cloud ingest running?)"
            if code == NO_MATCHING_SUBSCRIBERS
            else f"broker refused predictions: {text} (reason code {code})"
        )
        (log.warning if first_time else log.info)(
            "%s; seq %d-%d kept, %d waiting in the outbox, retrying in %.0f s",
            what,
            f.first,
            f.last,
            self.outbox.backlog,
            self._backoff.current,
        )

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
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            return  # the next flush tick after the back-off ends sends the probe
        while not self._stop.is_set() and self.link.connected:
            with self._lock:
                # While nobody receives: one probe batch at a time, so no rows are in flight
                # twice once the rows are rewound, and a refusal costs one batch, not a window.
                window = 1 if self._refused_since is not None else self.max_inflight
                if len(self._inflight) >= window:
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
