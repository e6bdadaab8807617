"""Registry errors: each names the record and what to do about it."""

from __future__ import annotations

from shared.errors import ParkwatchError


class RegistryError(ParkwatchError):
    """The registry database cannot be read or written, or a request contradicts its state."""


class NotFoundError(RegistryError):
    """A dataset, run or model version that the caller named is not in the registry."""


class StageError(RegistryError):
    """A stage change is not allowed (unknown stage, or a model that failed the promotion gate)."""
