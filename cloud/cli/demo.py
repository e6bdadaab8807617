from __future__ import annotations

from pathlib import Path

import click

from cloud.cli.common import PositiveSeconds
from shared.clitools import handle_errors


@click.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".demo"),
    show_default=True,
    help="Where the demo keeps its broker, stores, keys and logs.",
)
@click.option(
    "--duration", type=PositiveSeconds(), default=None, help="Stop after this many seconds (default: Ctrl-C)."
)
@click.option("--no-train", is_flag=True, help="Skip training/releasing a model; serve the baseline only.")
@handle_errors
def demo(workdir: Path, duration: float | None, no_train: bool) -> None:
    """The whole loop on this machine: broker, cloud side, one edge daemon with a sample camera.

    The box starts on the untrained baseline model; a real model is trained on the sample data
    lake (reused on later runs), approved for staging, and rolled out to the box over the signed
    channel while predictions stream into the cloud store.
    """
    from cloud.demo.runner import Demo

    count = Demo(workdir, train=not no_train, say=lambda s: click.echo(s)).run(duration)
    click.echo(f"demo stopped: {count} predictions stored in the cloud store")
