"""The materializer: turns one worker's inbox rows into fleet rows, in its own process.

Validation happens here, not in the receiver: a message is refused (counted, logged once per
kind, and kept as a dead letter with its reason) when its rows would be written, which loses
nothing already accepted and keeps the receiver's per-message work to a queue append. Each
batch goes into ``fleet.db`` in one transaction together with the inbox progress mark, then the
inbox rows are deleted; a crash between the two only leaves rows that the mark says to skip.

Why a process rather than a thread: decoding and row-writing are Python work that would take the
GIL from the MQTT receiver; in its own process it runs on another core and the receiver keeps
draining the broker.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cloud.fleet.backends import open_writer
from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.inbox import Inbox, InboxRow, inbox_path, materializer_lock_path, try_flock
from cloud.fleet.store import FleetStore
from cloud.fleet.workers import Beat, write_beat
from cloud.fleet.writer import DeadLetter, Incoming, WriteResult
from shared.backoff import Backoff
from shared.protocol import ProtocolError, decode
from shared.protocol.counter import RejectCounter

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.materialize")

_IDLE_S = 0.05  # poll interval when the inbox is empty
STOP_DRAIN_S = 5.0  # on stop, keep materializing this long; the rest stays in the inbox for next time

# Figures the materializer process shares with its ingest worker (a lock-free array of doubles;
# each slot has one writer). ``rx.*`` are refusals counted by the receiver, which the materializer
# persists (``rx_done.*`` is how much of them it has), so the receiver never writes fleet.db.
STAT_FIELDS = (
    "stored_predictions",
    "duplicates",
    "batches",
    "write_errors",
    "last_write_ts",
    "heartbeat_ts",
    "stop",  # set to 1 by the worker: a flag, not an Event, whose lock a killed child could leave held
    "rx_batch",  # size of the receiver's last inbox commit, and when: how hard the broker is pushing
    "rx_ts",
)
REJECT_KINDS = ("malformed", "unsupported_schema", "invalid", "too_large", "unknown_topic", "protocol")
_SLOTS = (
    STAT_FIELDS
    + tuple(f"rejected.{k}" for k in REJECT_KINDS)
    + tuple(f"rx.{k}" for k in REJECT_KINDS)
    + tuple(f"rx_done.{k}" for k in REJECT_KINDS)
)
_IX = {name: i for i, name in enumerate(_SLOTS)}
LOCK_WAIT_S = 30.0
HEARTBEAT_S = 2.0  # how often the worker's row in the shared store is refreshed
# Burst mode: while the receiver commits this many messages at a time (the broker is pushing as
# fast as we take), materialize in small steps with pauses, so the receiver keeps the CPU and the
# broker's queue drains first. Progress never stops: about a sixth of the time still goes to rows.
BURST_BATCH = 20
BURST_STEP = 50
BURST_PAUSE_S = 0.2


def reject_kind(kind: str) -> str:
    return kind if kind in REJECT_KINDS else "protocol"


class SharedStats:
    """Counters written by the materializer process and read by the ingest worker's ``stats()``."""

    def __init__(self, arr: SynchronizedArray[Any] | None = None) -> None:
        self.arr = arr if arr is not None else mp.get_context("spawn").Array("d", len(_SLOTS), lock=False)

    def add(self, name: str, n: float = 1) -> None:
        self.arr[_IX[name]] += n

    def set(self, name: str, v: float) -> None:
        self.arr[_IX[name]] = v

    def get(self, name: str) -> float:
        return float(self.arr[_IX[name]])

    def counts(self, prefix: str) -> dict[str, int]:
        return {k: int(self.get(f"{prefix}.{k}")) for k in REJECT_KINDS if self.get(f"{prefix}.{k}")}


class Materializer:
    """Applies one worker's inbox. Holds an exclusive lock on it, so two never apply the same rows."""

    def __init__(
        self,
        cfg: CloudConfig,
        worker: str,
        stats: SharedStats | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        lock_wait_s: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.worker = worker
        self.stats = stats or SharedStats()
        self.should_stop = should_stop
        self.rejects = RejectCounter()
        self._flushed: dict[str, int] = {}
        self._next_flush = 0.0
        path = inbox_path(cfg.paths, worker)
        self._lockfile = _lock(
            materializer_lock_path(path), LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        )
        self.inbox = Inbox(path, synchronous="NORMAL")
        self.writer = open_writer(cfg.fleet_store)
        inbox_id, upto = self.writer.progress(worker)
        if inbox_id != self.inbox.id:
            if upto:
                log.warning(
                    "inbox %s is not the one fleet.db last applied for worker %s (recreated or replaced); "
                    "applying it from its first row",
                    path,
                    worker,
                )
            upto = 0
        self.upto = upto
        self.inbox.delete_upto(self.upto)  # rows applied before a crash that skipped the trim
        self._started = time.time()
        self._next_beat = 0.0

    def close(self) -> None:
        self.inbox.close()
        self.writer.db.close()
        self._lockfile.close()  # releases the lock

    def receiver_busy(self) -> bool:
        return self.stats.get("rx_batch") >= BURST_BATCH and time.time() - self.stats.get("rx_ts") < 1.0

    def step(self, limit: int | None = None) -> int:
        """Materialize one batch; returns how many inbox rows it consumed (0: none, or stopping)."""
        rows = self.inbox.take(self.upto, limit or self.cfg.fleet.batch_max)
        if not rows:
            return 0
        items, letters = self._decode(rows)
        deltas, rx = self._counter_deltas()
        progress = (self.worker, self.inbox.id, rows[-1][0])
        res = self._write(items, deltas, progress, letters)
        if res is None:
            return 0  # asked to stop while the database was unavailable: the rows stay in the inbox
        self._counters_written(rx)
        self.upto = rows[-1][0]
        self.inbox.delete_upto(self.upto)
        for d in res.refused:
            log.error("stored as a dead letter, the database refused it: %s (%s)", d.reason, d.topic)
            self.stats.add("rejected.invalid")
        self.stats.add("stored_predictions", res.predictions_stored)
        self.stats.add("duplicates", res.duplicates)
        self.stats.add("batches")
        self.stats.set("last_write_ts", time.time())
        for device, first, last in res.gaps_opened:
            # INFO, not WARNING: with several workers or a resending outbox most gaps close within
            # moments; the health check reports the ones that last (fleet.gap_grace_s).
            log.info("gap: device %s is missing seq %d..%d", device, first, last)
        return len(rows)

    def _write(
        self,
        items: list[Incoming],
        deltas: dict[str, int],
        progress: tuple[str, str, int],
        letters: list[DeadLetter],
    ) -> WriteResult | None:
        backoff = Backoff(0.5, 30.0)
        isolate = False
        while True:
            try:
                done: WriteResult | None = self.writer.write(
                    items, deltas, progress, letters, isolate=isolate
                )
                return done
            except BadRecord as e:
                if not isolate:
                    # A value the database refuses: retrying the batch would fail forever and hold
                    # up everything behind it, so write item by item and keep the culprit aside.
                    log.error("%s; writing this batch item by item", e)
                    isolate = True
                    continue
                err: FleetError = e  # refused outside any one item: treat as the database's fault
            except FleetError as e:
                err = e
            # Locked, full or broken database: the rows stay in the inbox, ingest keeps accepting.
            self.stats.add("write_errors")
            delay = backoff.next()
            log.error("%s; retrying in %.1f s", err, delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self.should_stop():
                    return None
                time.sleep(0.1)

    def _decode(self, rows: list[InboxRow]) -> tuple[list[Incoming], list[DeadLetter]]:
        items: list[Incoming] = []
        letters: list[DeadLetter] = []
        max_bytes = self.cfg.mqtt.max_payload_bytes
        for _, topic, payload, received, retained in rows:
            try:
                parsed, msg = decode(topic, payload, max_bytes)
            except ProtocolError as e:
                err = e
            except Exception as e:  # a bug in a validator must not stop materialization
                log.exception("unexpected error decoding %s", topic)
                err = ProtocolError(f"{topic}: {e}")
            else:
                items.append(Incoming(parsed, msg, received, topic, payload, retained))
                continue
            self.rejects.reject(err)
            self.stats.add(f"rejected.{reject_kind(err.kind)}")
            letters.append(DeadLetter(topic, err.kind, str(err), received, payload))
        return items, letters

    def _counter_deltas(self) -> tuple[dict[str, int], dict[str, int]]:
        """Refusal counts not yet in fleet.db: ours, and the receiver's (``rx``, returned as read)."""
        snap = self.rejects.snapshot()
        deltas = {f"rejected.{k}": v - self._flushed.get(k, 0) for k, v in snap.items()}
        rx = self.stats.counts("rx")
        for k, v in rx.items():
            deltas[f"rejected.{k}"] = deltas.get(f"rejected.{k}", 0) + v - int(self.stats.get(f"rx_done.{k}"))
        return deltas, rx

    def _counters_written(self, rx: dict[str, int]) -> None:
        self._flushed = self.rejects.snapshot()
        for k, v in rx.items():
            self.stats.set(f"rx_done.{k}", v)

    def flush_counters(self) -> None:
        """Persist refusal counts when no rows are flowing (a box sending only garbage)."""
        if time.monotonic() < self._next_flush:
            return
        self._next_flush = time.monotonic() + 1.0
        deltas, rx = self._counter_deltas()
        if not any(deltas.values()):
            return
        try:
            self.writer.write([], deltas)
        except FleetError as e:
            log.error("%s", e)
            return
        self._counters_written(rx)

    def run(self, orphaned: Callable[[], bool] = lambda: False) -> None:
        """Until ``should_stop``: then drain for up to STOP_DRAIN_S. An orphan stops at once."""
        self._prune()  # at start-up, before this run's rows, then every retention_interval_s
        next_prune = time.monotonic() + self.cfg.fleet.retention_interval_s
        try:
            self._run(orphaned, next_prune)
        finally:
            # An orphan's worker died: say so rather than "stopped", which is a clean stop.
            self.beat("down" if orphaned() else "stopped", force=True)

    def beat(self, state: str = "running", force: bool = False) -> None:
        """This worker's row in the shared store (cloud/fleet/workers.py), every HEARTBEAT_S."""
        now = time.monotonic()
        if not force and now < self._next_beat:
            return
        self._next_beat = now + HEARTBEAT_S
        try:
            n, oldest = self.inbox.backlog_and_oldest()
            write_beat(
                self.writer.conn,
                Beat(
                    worker=self.worker,
                    started_ts=self._started,
                    state=state,
                    backlog=n,
                    oldest_age_s=None if oldest is None else round(max(0.0, time.time() - oldest), 1),
                    stored_predictions=int(self.stats.get("stored_predictions")),
                    write_errors=int(self.stats.get("write_errors")),
                ),
            )
        except Exception as e:  # the heartbeat is a report: never let it stop materializing
            log.warning("cannot write this worker's heartbeat row: %s", e)

    def _run(self, orphaned: Callable[[], bool], next_prune: float) -> None:
        stopping_since: float | None = None
        while not orphaned():
            self.beat()
            self.stats.set("heartbeat_ts", time.time())
            if stopping_since is None and self.should_stop():
                stopping_since = time.monotonic()
            busy = stopping_since is None and self.receiver_busy()
            if self.step(BURST_STEP if busy else None):
                if busy:
                    time.sleep(BURST_PAUSE_S)
                if stopping_since is not None and time.monotonic() - stopping_since > STOP_DRAIN_S:
                    log.info("stopping with %d messages left in the inbox", self.inbox.backlog())
                    return
                continue
            self.flush_counters()
            if stopping_since is not None:
                return
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.cfg.fleet.retention_interval_s
                self._prune()
            time.sleep(_IDLE_S)

    def _prune(self) -> None:
        try:
            with FleetStore(self.cfg.fleet_store) as store:
                out = store.prune(time.time() - self.cfg.fleet.retention_days * 86400)
            if any(out.values()):
                log.info("retention removed %s", out)
        except FleetError as e:
            log.error("%s", e)


def _lock(path: Path, wait_s: float) -> IO[bytes]:
    """The inbox's materializer lock; waits (a previous materializer may still be draining)."""
    f = try_flock(path, wait_s)
    if f is None:
        raise FleetError(
            f"another materializer holds {path}: the ingest worker with this client_id is running "
            "(or still stopping) and applies this inbox itself, so there is nothing to do by hand. "
            "If no such worker should be running, two share one client_id: give each its own "
            "fleet.client_id"
        )
    return f


def process_main(cfg: CloudConfig, worker: str, arr: Any, log_level: int, parent_pid: int) -> None:
    """Entry point of the materializer process (spawned by :class:`FleetIngest`)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Yield the CPU to the receiver during a burst: what is acknowledged is safe in the inbox, and
    # rows can wait a few seconds; a broker queue that overflows cannot. Nice is a weight, not a
    # ban: under sustained load this process still gets its share and the backlog is alerted on.
    if cfg.fleet.materializer_nice:
        os.nice(cfg.fleet.materializer_nice)
    stats = SharedStats(arr)
    terminated = False

    def _term(*_: object) -> None:
        nonlocal terminated
        terminated = True

    # The worker's stop flag (or SIGTERM, which systemd sends the whole group) ends us after a short
    # drain; a Ctrl-C sent to the process group is left to the worker, which then sets the flag.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _term)

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    m = Materializer(
        cfg, worker, stats, should_stop=lambda: terminated or stats.get("stop") > 0 or orphaned()
    )
    try:
        # An orphan (its worker was killed) stops at once: the next worker resumes the inbox.
        m.run(orphaned=orphaned)
    finally:
        m.close()
