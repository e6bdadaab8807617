"""Governance errors."""

from __future__ import annotations

from shared.errors import ParkwatchError


class GovernanceError(ParkwatchError):
    """An alert or action request cannot be carried out; the message says why and what to do."""


class AlertNotFound(GovernanceError):
    pass


class AlertStateError(GovernanceError):
    """E.g. acknowledging an alert that is already resolved."""


class ActionUnavailable(GovernanceError):
    """An action's back end (rollout, training) is missing or refused; the alert stays open."""
