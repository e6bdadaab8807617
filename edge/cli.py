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
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_PATH)
@click.option(
    "--allow-placeholders",
    is_flag=True,
    help="Only warn about the example's CHANGE-ME / box-01 values (the installer uses this).",
)
@json_option
@handle_errors
def config_check(path: Path, allow_placeholders: bool, as_json: bool) -> None:
    """Validate PATH; exit 2 naming the key if it is wrong, or if it is still the untouched example."""
    from edge.config import load, preflight, template_leftovers
    from shared.errors import ConfigError

    cfg = load(path)
    leftovers = template_leftovers(cfg)
    if leftovers and not allow_placeholders:
        key, problem = leftovers[0]
        others = "; ".join(f"{k}: {p}" for k, p in leftovers[1:])
        raise ConfigError(str(path), key, problem + (f" (also: {others})" if others else ""))
    warnings = preflight(cfg, path) + [f"{k}: {p}" for k, p in leftovers]
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


@edge.group()
def camera() -> None:
    """Check cameras from the box."""


@camera.command("test")
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(["rtsp", "mjpeg", "usb", "file", "folder"]),
    default=None,
    help="Default: from the URL (rtsp:// = rtsp, http(s):// = mjpeg).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("camera-test.jpg"),
    show_default=True,
    help="Where the one frame is saved.",
)
@click.option(
    "--timeout", type=click.FloatRange(0.5, 120), default=5.0, show_default=True, help="Seconds per step."
)
@json_option
@handle_errors
def camera_test(url: str, kind: str | None, out: Path, timeout: float, as_json: bool) -> None:
    """Test one camera URL: host reachable, what the camera replied (401 = password, 404 = path),
    and one frame saved to --out. Exit 0 if it works, 1 if not."""
    from edge.cameratest import check_camera, render

    report = check_camera(url, out, kind, timeout)
    emit(report.to_dict(), as_json, lambda _r: render(report))
    if not report.ok:
        raise SystemExit(1)


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
