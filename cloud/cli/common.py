"""What several cloud commands share: argument types that refuse nonsense at the command line, and
opening the config for a command that only reads what ``serve`` and ingest wrote.

Kept free of heavy imports: every cloud command module imports it when the CLI lists commands.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from shared.errors import ConfigError, ParkwatchError

if TYPE_CHECKING:
    from cloud.config import CloudConfig


class PositiveSeconds(click.ParamType[float, Any]):
    """A finite number of seconds above zero: ``0``, ``-5``, ``nan``, ``inf`` and ``1e400`` are
    refused as a usage error naming the option (they used to bypass the config's own ``gt=0``)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if v <= 0:
            self.fail(f"{value!r} must be more than 0 seconds", param, ctx)
        return v


class NonBlank(click.ParamType[str, Any]):
    """Text that is not empty or only whitespace (who did something, for the audit log); stripped."""

    name = "text"

    def __init__(self, what: str = "value") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text:
            self.fail(f"the {self.what} must not be blank: say who does this (for the audit log)", param, ctx)
        return text


ACTOR = NonBlank("actor")


class NoData(ParkwatchError):
    """The data folder exists but holds no database this command reads: nothing has run there yet."""


Need = Literal["fleet", "registry"]


def require_data(cfg: CloudConfig, config_path: Path, need: Need | None = "fleet") -> CloudConfig:
    """Refuse to run a reporting command against a data folder that is not there.

    Opening a store creates its database (and the folder), so a mistyped ``data_dir`` used to
    produce a new, empty install that said "no devices have reported yet". ``serve``, ``demo``,
    ``ingest`` and ``keys init`` create the folder; commands that only read or act on what those
    wrote call this first. A missing folder is a config error (exit 2, naming ``data_dir``); a
    folder without the database ``need`` names is exit 1.
    """
    data_dir = cfg.data_dir
    if not data_dir.is_dir():
        what = "is not a directory" if data_dir.exists() else "does not exist"
        raise ConfigError(
            str(config_path),
            "data_dir",
            f"{data_dir} {what}; check data_dir in the config (this command does not create it), "
            "or start `parkwatch cloud serve` with this config first: it creates the data folder",
        )
    if need == "fleet" and cfg.fleet.database_url:
        need = None  # the fleet store is a PostgreSQL server, not a file here: connecting says more
    if need is not None:
        db = cfg.paths.fleet_db if need == "fleet" else cfg.paths.registry_db
        if not db.is_file():
            writer = (
                "`parkwatch cloud serve` (fleet ingest)"
                if need == "fleet"
                else "`parkwatch cloud ingest`/`train` or `parkwatch cloud serve`"
            )
            raise NoData(
                f"no {need} database {db.name} in {data_dir} (data_dir in {config_path}): nothing has "
                f"written there yet; check data_dir in the config, or run {writer} with this config first"
            )
    return cfg


def load_existing(config_path: Path, need: Need | None = "fleet") -> CloudConfig:
    """:func:`cloud.config.load` for a command that reads an existing install (see :func:`require_data`)."""
    from cloud.config import load

    return require_data(load(config_path), config_path, need)
