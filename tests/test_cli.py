"""The CLI: --help everywhere, lazy imports (the edge never loads torch), reporting commands take --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from shared.cli import main

PARKWATCH = str(Path(sys.executable).parent / "parkwatch")


def _walk(cmd: click.Command, path: list[str], ctx: click.Context) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, f"{' '.join([*path, name])} is listed but cannot be loaded"
            out += _walk(sub, [*path, name], ctx)
    return out


def all_commands() -> list[tuple[list[str], click.Command]]:
    with click.Context(main) as ctx:
        return _walk(main, [], ctx)


def test_help_on_every_command() -> None:
    runner = CliRunner()
    commands = all_commands()
    assert len(commands) > 20
    for path, _ in commands:
        res = runner.invoke(main, [*path, "--help"])
        assert res.exit_code == 0, f"parkwatch {' '.join(path)} --help: {res.output}"
        assert "Usage:" in res.output


REPORTING_WITHOUT_JSON_OK = {
    # long-running services and interactive actions that report nothing structured
    ("edge", "run"),
    ("cloud", "serve"),
    ("cloud", "materialize"),
    ("cloud", "demo"),
}


def test_reporting_commands_accept_json() -> None:
    missing = []
    for path, cmd in all_commands():
        if isinstance(cmd, click.Group) or tuple(path) in REPORTING_WITHOUT_JSON_OK:
            continue
        if not any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option)):
            missing.append(" ".join(path))
    assert not missing, f"commands without --json: {missing}"


def test_edge_never_imports_torch() -> None:
    """A fresh interpreter runs the edge CLI paths and must not have loaded torch or cloud code."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from shared.cli import main\n"
        "r = CliRunner()\n"
        "cmds = (['edge', '--help'], ['edge', 'run', '--help'], ['edge', 'config', 'check', '--help'],\n"
        "        ['edge', 'classify', '--help'])\n"
        "for args in cmds:\n"
        "    assert r.invoke(main, args).exit_code == 0, args\n"
        "import edge.daemon, edge.model, edge.perception.pipeline, shared.perception\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'cloud'})\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "", f"edge side imported: {res.stdout}"


@pytest.mark.parametrize("args", [["--version"], ["edge", "--help"], ["cloud", "--help"]])
def test_console_script(args: list[str]) -> None:
    res = subprocess.run([PARKWATCH, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_usage_errors_are_json_with_json_and_not_the_config_status() -> None:
    res = subprocess.run(
        [PARKWATCH, "cloud", "approve", "v1", "--stage", "prod", "--json"], capture_output=True, text=True
    )
    assert res.returncode == 64, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is False and out["kind"] == "usage" and "'prod' is not one of" in out["error"]
    res = subprocess.run([PARKWATCH, "cloud", "approve", "v1"], capture_output=True, text=True)
    assert res.returncode == 64 and "Missing option '--stage'" in res.stderr and res.stdout == ""
