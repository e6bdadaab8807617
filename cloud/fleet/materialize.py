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
from typing import TYPE_CHECKING, Any

from cloud.fleet.errors import FleetError
from cloud.fleet.inbox import Inbox, InboxRow, inbox_path
from cloud.fleet.schema import connect
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import BatchWriter, DeadLetter, Incoming
from shared.protocol import ProtocolError, decode
from shared.protocol.counter import RejectCounter

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.materialize")

_IDLE_S = 0.05  # poll interval when the inbox is empty
STOP_DRAIN_S = 5.0  # on stop, keep materializing this long; the rest stays in the inbox for next time

# Figures the materializer process shares with its ingest worker (a lock-free array of doubles).
STAT_FIELDS = (
    "stored_predictions",
    "duplicates",
    "batches",
    "write_errors",
    "last_write_ts",
    "materialized",
    "heartbeat_ts",
    "stop",  # set to 1 by the worker: a flag, not an Event, whose lock a killed child could leave held
)
REJECT_KINDS = ("malformed", "unsupported_schema", "invalid", "too_large", "unknown_topic", "protocol")
_SLOTS = STAT_FIELDS + tuple(f"rejected.{k}" for k in REJECT_KINDS)
_IX = {name: i for i, name in enumerate(_SLOTS)}


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

    def rejected(self) -> dict[str, int]:
        return {k: int(self.get(f"rejected.{k}")) for k in REJECT_KINDS if self.get(f"rejected.{k}")}


class Materializer:
    def __init__(self, cfg: CloudConfig, worker: str, stats: SharedStats | None = None) -> None:
        self.cfg = cfg
        self.worker = worker
        self.stats = stats or SharedStats()
        self.rejects = RejectCounter()
        self._flushed: dict[str, int] = {}
        self.inbox = Inbox(inbox_path(cfg.data_dir, worker))
        self.writer = BatchWriter(connect(cfg.fleet_db, synchronous="FULL"))
        self.upto = self.writer.progress(worker)
        self.inbox.delete_upto(self.upto)  # rows applied before a crash that skipped the trim

    def close(self) -> None:
        self.inbox.close()
        self.writer.db.close()

    def step(self) -> int:
        """Materialize one batch; returns how many inbox rows it consumed (0: inbox empty)."""
        rows = self.inbox.take(self.upto, self.cfg.fleet.batch_max)
        if not rows:
            return 0
        items, letters = self._decode(rows)
        deltas = self._reject_deltas()
        delay = 0.5
        while True:
            try:
                res = self.writer.write(items, deltas, (self.worker, rows[-1][0]), letters)
                break
            except FleetError as e:
                # Keep the rows in the inbox and retry: nothing is lost, ingest keeps accepting.
                self.stats.add("write_errors")
                log.error("%s; retrying in %.1f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._flushed = self.rejects.snapshot()
        self.upto = rows[-1][0]
        self.inbox.delete_upto(self.upto)
        self.stats.add("stored_predictions", res.predictions_stored)
        self.stats.add("duplicates", res.duplicates)
        self.stats.add("batches")
        self.stats.add("materialized", len(rows))
        self.stats.set("last_write_ts", time.time())
        for device, first, last in res.gaps_opened:
            # INFO, not WARNING: with several workers or a resending outbox most gaps close within
            # moments; the health check reports the ones that last (fleet.gap_grace_s).
            log.info("gap: device %s is missing seq %d..%d", device, first, last)
        return len(rows)

    def _decode(self, rows: list[InboxRow]) -> tuple[list[Incoming], list[DeadLetter]]:
        items: list[Incoming] = []
        letters: list[DeadLetter] = []
        max_bytes = self.cfg.mqtt.max_payload_bytes
        for _, topic, payload, received in rows:
            try:
                parsed, msg = decode(topic, payload, max_bytes)
            except ProtocolError as e:
                err = e
            except Exception as e:  # a bug in a validator must not stop materialization
                log.exception("unexpected error decoding %s", topic)
                err = ProtocolError(f"{topic}: {e}")
            else:
                items.append(Incoming(parsed, msg, received))
                continue
            self.rejects.reject(err)
            self.stats.add(f"rejected.{err.kind}" if err.kind in REJECT_KINDS else "rejected.protocol")
            letters.append(DeadLetter(topic, err.kind, str(err), received, payload))
        return items, letters

    def _reject_deltas(self) -> dict[str, int]:
        snap = self.rejects.snapshot()
        return {f"rejected.{k}": v - self._flushed.get(k, 0) for k, v in snap.items()}

    def run(self, should_stop: Callable[[], bool]) -> None:
        self._prune()  # at start-up, before this run's rows, then every retention_interval_s
        next_prune = time.monotonic() + self.cfg.fleet.retention_interval_s
        stopping_since: float | None = None
        while True:
            self.stats.set("heartbeat_ts", time.time())
            if stopping_since is None and should_stop():
                stopping_since = time.monotonic()
            if self.step():
                if stopping_since is not None and time.monotonic() - stopping_since > STOP_DRAIN_S:
                    log.info("stopping with %d messages left in the inbox", self.inbox.backlog())
                    return
                continue
            if stopping_since is not None:
                return
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.cfg.fleet.retention_interval_s
                self._prune()
            time.sleep(_IDLE_S)

    def _prune(self) -> None:
        try:
            with FleetStore(self.cfg.fleet_db) as store:
                out = store.prune(time.time() - self.cfg.fleet.retention_days * 86400)
            if any(out.values()):
                log.info("retention removed %s", out)
        except FleetError as e:
            log.error("%s", e)


def process_main(cfg: CloudConfig, worker: str, arr: Any, log_level: int) -> None:
    """Entry point of the materializer process (spawned by :class:`FleetIngest`)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Yield the CPU to the receiver during a burst: what is acknowledged is safe in the inbox, and
    # rows can wait a few seconds; a broker queue that overflows cannot. Nice is a weight, not a
    # ban: under sustained load this process still gets its share and the backlog is alerted on.
    if cfg.fleet.materializer_nice:
        os.nice(cfg.fleet.materializer_nice)
    stats = SharedStats(arr)
    parent = os.getppid()
    terminated = False

    def _term(*_: object) -> None:
        nonlocal terminated
        terminated = True

    # The worker's stop flag ends us; a Ctrl-C sent to the whole process group must not cut a
    # transaction short (it would be rolled back and redone, but the drain would be lost).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _term)
    m = Materializer(cfg, worker, stats)
    try:
        # An orphan (its worker was killed) stops too: the next worker resumes the inbox.
        m.run(lambda: terminated or stats.get("stop") > 0 or os.getppid() != parent)
    finally:
        m.close()
