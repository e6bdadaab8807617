"""Packaging errors; each message says what to do."""

from __future__ import annotations

from shared.errors import ParkwatchError


class PackagingError(ParkwatchError):
    """Export, parity check or package assembly failed; nothing was registered."""


class ParityError(PackagingError):
    """The exported ONNX graph disagrees with the torch model beyond the tolerance."""
