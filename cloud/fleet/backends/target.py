"""Where the fleet store lives: a SQLite file (one host) or a PostgreSQL database (a cluster).

``FleetStore``, ``AlertStore`` and the ingest writer take a :data:`FleetTarget`; a ``Path``
keeps the embedded SQLite backend, a :class:`PgTarget` selects PostgreSQL. ``cfg.fleet_store``
builds it from ``fleet.database_url`` (+ ``fleet.database_password``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.config import SecretRef


@dataclass(frozen=True)
class PgTarget:
    """A PostgreSQL connection URL without its password, and where the password lives.

    The password is read when a connection opens (never kept in the config object), so a
    rotated secret file is picked up by the next connection.
    """

    url: str
    password: SecretRef | None = None
    application_name: str = "parkwatch"

    def conninfo(self) -> dict[str, str]:
        kw: dict[str, str] = {"conninfo": self.url, "application_name": self.application_name}
        if self.password is not None:
            kw["password"] = self.password.resolve("fleet.database_password")
        return kw

    def display(self) -> str:
        """The URL as safe to log (it never carries a password: config validation refuses one)."""
        u = urlsplit(self.url)
        return f"{u.scheme}://{u.hostname or ''}{':' + str(u.port) if u.port else ''}{u.path}"

    def __str__(self) -> str:
        return self.display()


FleetTarget = Path | PgTarget


def is_pg(target: object) -> bool:
    return isinstance(target, PgTarget)
