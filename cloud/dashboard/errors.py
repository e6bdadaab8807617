"""Dashboard errors: each says what the user (or operator running the CLI) should do next."""

from __future__ import annotations

from shared.errors import ParkwatchError


class DashboardError(ParkwatchError):
    """Base for dashboard problems."""


class UserError(DashboardError):
    """A user cannot be created, found or changed as asked (duplicate, unknown, weak password)."""


class AuthError(DashboardError):
    """Sign-in failed or a session is missing, expired or forged."""


class Forbidden(DashboardError):
    """The signed-in user's role does not allow this action."""


class CsrfError(DashboardError):
    """A form or request arrived without the session's CSRF token."""
