"""Updater errors. Every one carries a short ``reason`` that goes out as ``failed: REASON``."""

from __future__ import annotations

from edge.errors import EdgeError


class UpdateError(EdgeError):
    """An update step failed; the running model is untouched. ``stage`` says which step."""

    def __init__(self, stage: str, reason: str, transient: bool = False) -> None:
        self.stage = stage
        self.reason = reason
        self.transient = transient
        super().__init__(f"{stage}: {reason}")


class TransportError(EdgeError):
    """The update channel did not answer (broker away, cloud responder down); retried later."""
