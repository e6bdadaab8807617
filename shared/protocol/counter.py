"""Count rejected messages per kind and log each kind once, so a flood cannot flood the log."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from shared.protocol.errors import ProtocolError

log = logging.getLogger("parkwatch.protocol")


class RejectCounter:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reject(self, err: ProtocolError) -> None:
        with self._lock:
            self._counts[err.kind] += 1
            first = self._counts[err.kind] == 1
        if first:
            log.warning(
                "dropping invalid message (%s; later ones of this kind are only counted): %s", err.kind, err
            )

    def count(self, kind: str) -> None:
        """One more refusal of ``kind`` that its caller has logged already (a record the
        database refused after the protocol accepted it), so the counts match the dead letters."""
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
