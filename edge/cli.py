"""``parkwatch edge …``. Only light imports at module level: this runs on the box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edge.config import DEFAULT_PATH
from shared.clitools import config_option, emit, handle_errors, json_option


@click.group()
def edge() -> None:
    """The daemon on a camera box."""


@edge.group()
def config() -> None:
    """Inspect the edge config."""


@config.command("check")
@click.argument(
    "path", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_PATH, envvar="PARKWATCH_CONFIG"
)
@json_option
@handle_errors
def config_check(path: Path, as_json: bool) -> None:
    """Validate PATH; exit 2 naming the key if it is wrong.

    PATH defaults to $PARKWATCH_CONFIG, then the installed path.
    """
    from edge.config import load, preflight

    cfg = load(path)
    warnings = preflight(cfg, path)
    summary: dict[str, Any] = {
        "ok": True,
        "file": str(path),
        "device": cfg.device.id,
        "site": cfg.device.site,
        "group": cfg.device.group,
        "cameras": [c.id for c in cfg.cameras],
        "warnings": warnings,
    }
    emit(
        summary,
        as_json,
        lambda s: (
            f"{path}: ok (device {s['device']} at site {s['site']}, {len(s['cameras'])} camera(s))"
            + "".join(f"\nwarning: {w}" for w in s["warnings"])
        ),
    )


@edge.command()
@config_option(DEFAULT_PATH)
@handle_errors
def run(config_path: Path) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from edge.config import load, preflight
    from edge.daemon import run_daemon

    cfg = load(config_path)
    for warning in preflight(cfg, config_path):
        click.echo(f"warning: {warning}", err=True)
    run_daemon(cfg)
