"""Fleet errors: each says which record or file is at fault and what to do."""

from __future__ import annotations

from shared.errors import ParkwatchError


class FleetError(ParkwatchError):
    """The fleet database cannot be read or written, or a request names something unknown."""


class NotFound(FleetError):
    """A prediction, snapshot, device or alert that the caller named does not exist."""


class BadRequest(FleetError):
    """A request that cannot be honoured as given (wrong label, malformed id)."""


class BadRecord(FleetError):
    """A validated message that still cannot be stored (the database refuses its values).

    Unlike a :class:`FleetError` from a locked or full database, retrying does not help: the
    writer isolates the record and keeps it as a dead letter so the rows behind it move on.
    """
