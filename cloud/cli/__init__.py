"""``parkwatch cloud …``. Each domain's commands live in their own module, loaded on demand."""

from __future__ import annotations

import click

from shared.cli import LazyGroup

COMMANDS = {
    "init": "cloud.cli.init:init",
    "config": "cloud.cli.base:config",
    "serve": "cloud.cli.serve:serve",
    "demo": "cloud.cli.demo:demo",
    # build pipeline
    "ingest": "cloud.cli.data:ingest",
    "datasets": "cloud.cli.data:datasets",
    "train": "cloud.cli.models:train",
    "evaluate": "cloud.cli.models:evaluate",
    "models": "cloud.cli.models:models",
    "baseline": "cloud.cli.models:baseline",
    # secure delivery
    "keys": "cloud.cli.release:keys",
    "approve": "cloud.cli.release:approve",
    "reject": "cloud.cli.release:reject",
    "rollout": "cloud.cli.release:rollout",
    "rollback": "cloud.cli.release:rollback",
    "audit": "cloud.cli.release:audit",
    "devices": "cloud.cli.release:devices",
    # fleet monitoring and governance
    "analyze": "cloud.cli.fleet:analyze",
    "label": "cloud.cli.fleet:label",
    "lineage": "cloud.cli.fleet:lineage",
    "alerts": "cloud.cli.fleet:alerts",
    "health": "cloud.cli.fleet:health",
    "inbox": "cloud.cli.fleet:inbox",
    "materialize": "cloud.cli.fleet:materialize",
    # dashboard
    "users": "cloud.cli.dashboard:users",
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
def cloud() -> None:
    """Training, registry, releases and fleet monitoring."""
