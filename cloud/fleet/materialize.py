"""The materializer: turns one worker's inbox rows into fleet rows, in a process of its own.

Validation happens here, not in the receiver: a message is refused (counted, logged once per
kind, and kept as a dead letter with its reason) when its rows would be written, which loses
nothing already accepted and keeps the receiver's per-message work to a queue append. Each
batch goes into the fleet store in one transaction together with the inbox progress mark and
this worker's counters (:mod:`cloud.fleet.materializer_stats`), then the inbox rows are deleted;
a crash between the two only leaves rows that the mark says to skip.

Why a process rather than a thread: decoding and row-writing are Python work that would take the
GIL from the MQTT receiver; in its own process it runs on another core and the receiver keeps
draining the broker. It is ``parkwatch cloud materialize``: under systemd a unit of its own,
in ``parkwatch cloud serve`` a child process (:class:`MaterializerProcess`). It shares nothing
with the receiver but the inbox file: even how hard the broker is pushing (for burst mode) is
read from the inbox, where the receiver notes the size of each commit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cloud.children import ChildProcess
from cloud.fleet.backends import open_writer
from cloud.fleet.errors import BadRecord, FleetError
from cloud.fleet.inbox import (
    REJECT_KINDS,
    REJECTED_PREFIX,
    Inbox,
    InboxRow,
    inbox_path,
    materializer_lock_path,
    reject_kind,
    try_flock,
)
from cloud.fleet.materializer_stats import BatchFacts
from cloud.fleet.schema import connect
from cloud.fleet.store import FleetStore
from cloud.fleet.workers import Beat, write_beat
from cloud.fleet.writer import DeadLetter, Incoming, WriteResult
from shared.backoff import Backoff
from shared.protocol import ProtocolError, decode
from shared.protocol.counter import RejectCounter

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.materialize")

__all__ = ["REJECT_KINDS", "Materializer", "MaterializerProcess", "materialize_until_stopped", "reject_kind"]

_IDLE_S = 0.05  # poll interval when the inbox is empty
STOP_DRAIN_S = 5.0  # on stop, keep materializing this long; the rest stays in the inbox for next time

LOCK_WAIT_S = 30.0
HEARTBEAT_S = 2.0  # how often the worker's row in the shared store is refreshed
# Burst mode: while the receiver commits this many messages at a time (the broker is pushing as
# fast as we take), materialize in small steps with pauses, so the receiver keeps the CPU and the
# broker's queue drains first. Progress never stops: about a sixth of the time still goes to rows.
BURST_BATCH = 20
BURST_STEP = 50
BURST_PAUSE_S = 0.2


class Materializer:
    """Applies one worker's inbox. Holds an exclusive lock on it, so two never apply the same rows."""

    def __init__(
        self,
        cfg: CloudConfig,
        worker: str,
        should_stop: Callable[[], bool] = lambda: False,
        lock_wait_s: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.worker = worker
        self.should_stop = should_stop
        self.rejects = RejectCounter()
        # This run's figures, for the heartbeat row; the lasting ones are in materializer_stats.
        self.stored_predictions = 0
        self.write_errors = 0
        path = inbox_path(cfg.paths, worker)
        self._lockfile = _lock(
            materializer_lock_path(path), LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        )
        try:
            self.inbox = Inbox(path, synchronous="NORMAL")
            self.writer = open_writer(cfg.fleet_store)
        except BaseException:
            self._lockfile.close()
            raise
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
        n, ts = self.inbox.receiver_pressure()
        return n >= BURST_BATCH and time.time() - ts < 1.0

    def step(self, limit: int | None = None) -> int:
        """Materialize one batch; returns how many inbox rows it consumed (0: none, or stopping)."""
        rows = self.inbox.take(self.upto, limit or self.cfg.fleet.batch_max)
        if not rows:
            return 0
        items, letters, deltas, rx = self._decode(rows)
        progress = (self.worker, self.inbox.id, rows[-1][0])
        facts = BatchFacts(rows=len(rows), rejected=rx, oldest_received_ts=min(r[3] for r in rows))
        res = self._write(items, deltas, progress, letters, facts)
        if res is None:
            return 0  # asked to stop while the database was unavailable: the rows stay in the inbox
        self.upto = rows[-1][0]
        self.inbox.delete_upto(self.upto)
        for d in res.refused:
            log.error("stored as a dead letter, the database refused it: %s (%s)", d.reason, d.topic)
            self.rejects.count(d.kind)
        self.stored_predictions += res.predictions_stored
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
        facts: BatchFacts,
    ) -> WriteResult | None:
        backoff = Backoff(0.5, 30.0)
        isolate = False
        while True:
            try:
                done: WriteResult | None = self.writer.write(
                    items, deltas, progress, letters, isolate=isolate, facts=facts
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
            self.write_errors += 1
            delay = backoff.next()
            log.error("%s; retrying in %.1f s", err, delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self.should_stop():
                    return None
                time.sleep(0.1)

    def _decode(self, rows: list[InboxRow]) -> tuple[list[Incoming], list[DeadLetter], dict[str, int], int]:
        """Decoded items, dead letters, this batch's refusal counts (``rejected.<kind>``), and how
        many of the rows are the receiver's refusals (:data:`REJECTED_PREFIX`)."""
        items: list[Incoming] = []
        letters: list[DeadLetter] = []
        deltas: dict[str, int] = {}
        rx = 0
        max_bytes = self.cfg.mqtt.max_payload_bytes
        for _, topic, payload, received, retained in rows:
            if topic.startswith(REJECTED_PREFIX):
                # Refused by the receiver, which logged it: counted here, in this batch's transaction.
                kind = reject_kind(topic[len(REJECTED_PREFIX) :])
                deltas[f"rejected.{kind}"] = deltas.get(f"rejected.{kind}", 0) + 1
                rx += 1
                continue
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
            self.rejects.reject(err)  # logs the first of each kind
            kind = reject_kind(err.kind)
            deltas[f"rejected.{kind}"] = deltas.get(f"rejected.{kind}", 0) + 1
            letters.append(DeadLetter(topic, err.kind, str(err), received, payload))
        return items, letters, deltas, rx

    def drain(self) -> int:
        """Apply everything the inbox holds now; returns how many rows."""
        n = 0
        while k := self.step():
            n += k
        return n

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
                    stored_predictions=self.stored_predictions,
                    write_errors=self.write_errors,
                ),
            )
        except Exception as e:  # the heartbeat is a report: never let it stop materializing
            log.warning("cannot write this worker's heartbeat row: %s", e)

    def _run(self, orphaned: Callable[[], bool], next_prune: float) -> None:
        stopping_since: float | None = None
        while not orphaned():
            self.beat()
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
            f"another materializer holds {path}: the materializer of this worker is running (or still "
            "stopping: its `parkwatch cloud materialize`, or the one `parkwatch cloud serve` starts) and "
            "applies this inbox itself, so there is nothing to do by hand. If none should be running, two "
            "workers share one client_id: give each its own fleet.client_id"
        )
    return f


def materialize_until_stopped(cfg: CloudConfig, worker: str, parent_pid: int | None = None) -> None:
    """``parkwatch cloud materialize``: apply ``worker``'s inbox until SIGTERM or SIGINT (then drain
    for up to STOP_DRAIN_S), or at once if ``parent_pid`` is given and that process goes away."""
    # Yield the CPU to the receiver during a burst: what is acknowledged is safe in the inbox, and
    # rows can wait a few seconds; a broker queue that overflows cannot. Nice is a weight, not a
    # ban: under sustained load this process still gets its share and the backlog is alerted on.
    if cfg.fleet.materializer_nice:
        try:
            os.nice(cfg.fleet.materializer_nice)
        except OSError as e:  # a seccomp filter refusing setpriority: the unit's Nice= applies instead
            log.info("cannot lower this process's CPU priority (%s); set it in the service manager", e)
    stopping = threading.Event()

    def _term(signum: int, _frame: object) -> None:
        log.info("signal %d: materializing for up to %.0f s more, then stopping", signum, STOP_DRAIN_S)
        stopping.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)

    def orphaned() -> bool:
        # Started by `cloud serve`, which died without stopping us: the next one starts its own.
        return parent_pid is not None and os.getppid() != parent_pid

    m = Materializer(cfg, worker, should_stop=lambda: stopping.is_set() or orphaned())
    log.info("materializing the inbox of ingest worker %s into %s", worker, _where(cfg))
    try:
        m.run(orphaned=orphaned)
    finally:
        m.close()


def _where(cfg: CloudConfig) -> str:
    return "PostgreSQL" if cfg.fleet.database_url else str(cfg.paths.fleet_db)


class MaterializerProcess(ChildProcess):
    """The ``materializer`` part of ``parkwatch cloud serve``: ``parkwatch cloud materialize`` for
    this config's ingest worker, as a child process (restarted if it dies). Under systemd it is a
    unit of its own instead (parkwatch-cloud-materialize.service, with ``serve --skip materializer``)."""

    def __init__(self, cfg: CloudConfig, worker: str | None = None) -> None:
        self.cfg = cfg
        self.worker = worker or cfg.client_id("ingest")
        super().__init__(
            f"materializer {self.worker}",
            ["cloud", "materialize", "--worker", self.worker],
            cfg.model_dump_json(),
        )

    def start(self) -> None:
        # Open (create, migrate) the fleet store here first: a bad path or an unreachable server
        # stops `serve` at once with its message, instead of a child that keeps failing.
        connect(self.cfg.fleet_store, synchronous="FULL").close()
        super().start()
