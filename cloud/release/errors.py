"""Release-channel errors: each says what is wrong and what to run next."""

from __future__ import annotations

from shared.errors import ParkwatchError


class ReleaseError(ParkwatchError):
    """The release channel cannot do what was asked."""


class KeyError_(ReleaseError):
    """A signing key is missing, unreadable or too widely readable."""


class RepositoryError(ReleaseError):
    """The TUF repository is missing, inconsistent, or refuses the change."""


class RolloutError(ReleaseError):
    """A rollout or rollback request contradicts the registry or the repository."""


class ProvisioningError(ReleaseError):
    """A device or broker credential request is invalid."""
