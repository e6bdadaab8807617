"""Recent errors and warnings kept in memory for the status page ("what went wrong lately")."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from shared.redact import redact_text


@dataclass(frozen=True)
class Event:
    ts: float
    source: str
    message: str
    count: int = 1


class RecentErrors:
    """A bounded list where a repeat of the previous message from a source bumps its count."""

    def __init__(self, maxlen: int = 50) -> None:
        self._items: deque[Event] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, source: str, message: str) -> None:
        message = redact_text(message)  # shown on the status page: no URL passwords
        with self._lock:
            self.total += 1
            for i in range(len(self._items) - 1, -1, -1):
                e = self._items[i]
                if e.source == source:
                    if e.message == message:
                        del self._items[i]
                        self._items.append(Event(time.time(), source, message, e.count + 1))
                        return
                    break
            self._items.append(Event(time.time(), source, message))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(e) for e in reversed(self._items)]


class RecentDeltas:
    """How much lifetime counters grew over the last ``window_s``: the banner warns on what
    happened lately, not on a total that never goes down (330 evictions last week are history).

    ``observe`` is called whenever the numbers are read (status page, telemetry every few
    seconds); one sample at or before the window's start is kept as the baseline.
    """

    def __init__(self, window_s: float = 600.0) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def observe(self, name: str, total: int, now: float | None = None) -> int:
        """Record ``total`` for ``name``; returns its growth within the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._samples.setdefault(name, deque())
            if not q or q[-1][1] != total or now - q[-1][0] > self.window_s / 10:
                q.append((now, total))
            while len(q) >= 2 and q[1][0] <= now - self.window_s:
                q.popleft()
            return max(total - q[0][1], 0)
