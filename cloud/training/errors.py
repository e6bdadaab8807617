"""Training errors; each message says what to do."""

from __future__ import annotations

from shared.errors import ParkwatchError


class TrainingError(ParkwatchError):
    """Training cannot start or finish (missing dataset, weights, bad parameters, interrupted)."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C or a signal stopped a run; nothing half-made was kept or registered."""
