"""Errors the edge daemon raises on purpose; each message says what to do next."""

from __future__ import annotations

from shared.errors import ParkwatchError


class EdgeError(ParkwatchError):
    """Base for every edge-side error a technician or the updater can act on."""


class ModelError(EdgeError):
    """A model cannot be used; the model that was running (if any) keeps running."""


class ModelLoadError(ModelError):
    """The file or package is missing, unreadable, or ONNX Runtime refuses it."""


class ModelMetadataError(ModelError):
    """The ONNX file lacks the ``parkwatch.*`` metadata (labels, preprocessing) we need to run it."""


class CameraError(EdgeError):
    """A camera source cannot be opened or read (the reader retries with backoff)."""


class OutboxError(EdgeError):
    """The prediction outbox cannot be written or read."""


class OutboxFullError(OutboxError):
    """The disk (or the database's size limit) under the outbox is full; predictions are counted as lost."""
