"""Helpers every CLI command shares: --config, --json, and turning our errors into exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from shared.errors import ConfigError, ParkwatchError
from shared.records import jsonable

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_CONFIG = 2


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(f)


def config_option(default: Path) -> Callable[[F], F]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=default,
        envvar="PARKWATCH_CONFIG",
        show_default=True,
        help="TOML config file.",
    )


def emit(obj: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``obj``; store records in it (shared/records.py) print as the dicts they stand for,
    the same for ``--json`` and for the human renderer."""
    obj = jsonable(obj)
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
    elif human is not None:
        click.echo(human(obj))
    else:
        click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int = EXIT_ERROR, as_json: bool = False, **extra: Any) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": message, **extra}, sort_keys=True, default=str))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(f: F) -> F:
    """Turn :class:`ParkwatchError` into a one-line message and an exit code (2 for config)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            fail(
                f"config {e.path}: key {e.key}: {e.problem}",
                EXIT_CONFIG,
                as_json,
                file=e.path,
                key=e.key,
                problem=e.problem,
            )
        except ParkwatchError as e:
            fail(str(e), EXIT_ERROR, as_json, kind=type(e).__name__)

    return wrapper  # type: ignore[return-value]
