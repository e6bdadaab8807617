from __future__ import annotations

from pathlib import Path

import click

from cloud.config import DEFAULT_PATH
from shared.clitools import emit, handle_errors, json_option


@click.group()
def config() -> None:
    """Inspect the cloud config."""


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_PATH)
@json_option
@handle_errors
def config_check(path: Path, as_json: bool) -> None:
    """Validate PATH; exit 2 naming the key if it is wrong."""
    from cloud.config import load

    cfg = load(path)
    emit(
        {"ok": True, "file": str(path), "data_dir": str(cfg.data_dir)},
        as_json,
        lambda s: f"{path}: ok (data in {s['data_dir']})",
    )
