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
    help="Run only these components (fleet-ingest, materializer, release, analysis, dashboard); "
    "repeatable. fleet-ingest brings its materializer along unless --skip materializer.",
)
@click.option(
    "--skip",
    multiple=True,
    help="Run every component but these; repeatable. The systemd install runs '--skip materializer' "
    "beside its own unit running 'parkwatch cloud materialize'.",
)
@handle_errors
def serve(config_path: Path, only: tuple[str, ...], skip: tuple[str, ...]) -> None:
    """Run the cloud side: fleet ingest (receiver and materializer), release channel, analysis
    scheduler, dashboard."""
    from cloud.config import load
    from cloud.server import CloudServer

    server = CloudServer(load(config_path), only=list(only) or None, skip=list(skip))
    server.serve_forever(on_started=click.echo)
