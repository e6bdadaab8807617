"""Commits predictions to the outbox on a thread of its own (group commit).

Why not on the inference thread: a commit with ``synchronous = full`` waits for the disk
(about 0.5–2 ms here, far more on an SD card), time the model could spend on the next frame.
Here, everything queued while one commit runs goes into the next, so a busy box pays one fsync
per group instead of per frame.

Why a commit lingers (``[outbox] commit_linger_s``): without it a box classifying 130 frames/s
commits 130 times a second, one frame each, and every commit's Python (rows to JSON, the insert)
takes the GIL just as ``session.run`` returns on the inference thread, which then waits for it:
about 5 % of the model's throughput on a 2-core box (``bench/edge_throughput.py``). Waiting a few
tens of ms after the first prediction of a group lets the following frames join it. It adds
nothing a user sees (results leave the box in batches every ``flush_interval_s`` anyway), and
bounds what a power cut can take to what was classified in that wait: never accepted, as before.

The contract is unchanged: a prediction counts as accepted once committed, and only committed
rows are published. What is queued but not committed when the process is killed was never
accepted (it has no seq); a graceful stop commits everything queued first.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge.errors import OutboxError
from edge.events import RecentErrors
from edge.outbox import Outbox

log = logging.getLogger("parkwatch.edge.writer")

_STOP = object()


class OutboxWriter:
    def __init__(
        self,
        outbox: Outbox,
        errors: RecentErrors,
        on_commit: Callable[[int], None] | None = None,
        max_group: int = 1000,
        linger_s: float = 0.0,
    ) -> None:
        self.outbox = outbox
        self.errors = errors
        self.on_commit = on_commit
        self.max_group = max_group
        self.linger_s = linger_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.lost = 0
        self.commits = 0
        self._pending = 0
        self._idle = threading.Condition()
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def submit(self, predictions: list[dict[str, Any]]) -> None:
        """Queue prediction dicts; their ``seq`` is filled in once committed."""
        if predictions:
            with self._idle:
                self._pending += 1
            self._q.put(predictions)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed (or failed)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit everything queued, then stop."""
        self._stopping.set()  # a lingering commit goes now
        self._q.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            group: list[list[dict[str, Any]]] = []
            stop = item is _STOP
            if not stop:
                group.append(item)
                if self.linger_s > 0:
                    # a sleep, not a get with a timeout: each put would wake this thread again
                    self._stopping.wait(self.linger_s)
            while not stop and sum(len(g) for g in group) < self.max_group:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    group.append(item)
            if group:
                self._commit(group)
            if stop:
                return

    def _commit(self, group: list[list[dict[str, Any]]]) -> None:
        preds = [p for g in group for p in g]
        try:
            seqs = self.outbox.append(preds)
        except OutboxError as e:
            self.lost += len(preds)
            self.errors.add("outbox", str(e))
            seqs = []
        except Exception as e:  # a bug must not stop the writer; the loss is counted
            self.lost += len(preds)
            self.errors.add("outbox", f"{type(e).__name__}: {e}")
            log.exception("outbox write failed")
            seqs = []
        for pred, seq in zip(preds, seqs, strict=False):
            pred["seq"] = seq
        if seqs:
            self.commits += 1
            if self.on_commit is not None:
                self.on_commit(len(seqs))
        with self._idle:
            self._pending -= len(group)
            self._idle.notify_all()
