"""Backbone runs for many small jobs (a frame's regions, a scene's tiles), a batch at a time,
and the ``.npz`` cache files they fill.

One forward pass per region would spend most of its time in per-call overhead; one per job
leaves batches of 1-24 rows. So jobs queue until ``batch`` rows are waiting, run together, and
each job gets its own rows back through its callback, in the order it was added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


class BackboneBatches:
    def __init__(
        self,
        backbone: Callable[[F32], F32],
        batch: int = 48,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.backbone = backbone
        self.batch = batch
        self.progress = progress
        self._todo: list[tuple[F32, Callable[[F32], None]]] = []
        self._pending = 0

    def add(self, tensors: F32, done: Callable[[F32], None]) -> None:
        """Queue one job's model inputs; ``done`` gets their features when the batch runs."""
        self._todo.append((tensors, done))
        self._pending += len(tensors)
        if self._pending >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._todo:
            return
        rows = self.backbone(np.concatenate([t for t, _ in self._todo]))
        start = 0
        for t, done in self._todo:
            done(rows[start : start + len(t)])
            start += len(t)
        if self.progress:
            self.progress(len(self._todo))
        self._todo.clear()
        self._pending = 0


def save_npz(path: Path, **arrays: npt.NDArray[np.generic]) -> None:
    """A cache file written whole or not at all (temp file + rename): a killed run leaves no
    torn file that a later run would take for features."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
