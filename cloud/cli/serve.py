from __future__ import annotations

from pathlib import Path

import click

from cloud.config import DEFAULT_PATH
from shared.clitools import config_option, handle_errors


@click.command()
@config_option(DEFAULT_PATH)
@click.option(
    "--only",
    multiple=True,
    help="Run only these components (fleet-ingest, release, analysis, dashboard); repeatable.",
)
@handle_errors
def serve(config_path: Path, only: tuple[str, ...]) -> None:
    """Run the cloud side: fleet ingest, release channel, analysis scheduler, dashboard."""
    from cloud.config import load
    from cloud.server import CloudServer

    CloudServer(load(config_path), only=list(only) or None).serve_forever(on_started=click.echo)
