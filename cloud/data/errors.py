"""Ingest errors; each message says what to do. Nothing is registered when one is raised."""

from __future__ import annotations

from shared.errors import ParkwatchError


class IngestError(ParkwatchError):
    """The data-lake folder cannot become a dataset version (empty, one label, bad label names...)."""
