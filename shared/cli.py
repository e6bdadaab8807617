"""The ``parkwatch`` command. Sub-groups load lazily so ``parkwatch edge …`` never imports torch."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any

import click

from shared import __version__


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when invoked (or listed in --help)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name].split(":")
            cmd = getattr(importlib.import_module(module_name), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)


EXIT_USAGE = 64  # EX_USAGE: 2 is kept for config errors


class RootGroup(LazyGroup):
    """Turns command-line mistakes into the same shape as every other error: with ``--json``
    a JSON object on stdout, and an exit status (64) that is not the config-error status (2)."""

    def main(self, args: Any = None, prog_name: str | None = None, **kw: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        kw.pop("standalone_mode", None)
        try:
            return super().main(argv, prog_name, standalone_mode=False, **kw)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.ClickException as e:
            if "--json" in argv:
                click.echo(json.dumps({"ok": False, "error": e.format_message(), "kind": "usage"}))
            e.show()
            sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)


@click.group(
    cls=RootGroup,
    lazy={"edge": "edge.cli:edge", "cloud": "cloud.cli:cloud"},
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="parkwatch")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """parkwatch: cat-or-dog classification at the edge, trained and governed in the cloud.

    \b
    parkwatch edge …   the daemon on a camera box
    parkwatch cloud …  training, registry, releases, fleet monitoring
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    env_level = os.environ.get("PARKWATCH_LOG_LEVEL")
    logging.basicConfig(
        level=env_level.upper() if env_level else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":  # python -m shared.cli, where the console script is not installed
    main()
