"""``parkwatch edge …``. Only light imports at module level: this runs on the box."""

from __future__ import annotations

import json
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
@click.option(
    "--allow-placeholders",
    is_flag=True,
    help="Only warn about the example's CHANGE-ME / box-01 values (the installer uses this).",
)
@json_option
@handle_errors
def config_check(path: Path, allow_placeholders: bool, as_json: bool) -> None:
    """Validate PATH; exit 2 naming the key if it is wrong, or if it is still the untouched example.

    PATH defaults to $PARKWATCH_CONFIG, then the installed path.
    """
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


@edge.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Model package folder (or a .onnx file with parkwatch metadata).",
)
@click.option(
    "--batch", default=8, show_default=True, type=click.IntRange(1, 256), help="Images per model run."
)
@json_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@handle_errors
def classify(model_path: Path, batch: int, as_json: bool, files: tuple[Path, ...]) -> None:
    """Classify still images FILES the way the box classifies a frame.

    Same preprocessing, regions (whole-frame view, tiles, and a closer look at the strongest
    tile), rejection and thresholds as the daemon, from the package and the edge defaults.
    Prints per file its label (a pet label, none or abstain), confidence and the regions that
    held a pet. A file that cannot be read is reported in its entry and the others still go
    through; the exit status is 1 if any failed.
    """
    from edge.config import InferenceConfig
    from edge.model import load_model
    from edge.perception.config import RegionsConfig
    from edge.perception.pipeline import FramePipeline
    from edge.preprocess import ImageError, load_image

    inference = InferenceConfig()
    model = load_model(model_path, inference)
    pipe = FramePipeline(model, RegionsConfig(), inference.confidence_threshold)
    entries: list[dict[str, Any]] = [{"file": str(f)} for f in files]
    pending: list[tuple[int, Any]] = []

    def flush() -> None:
        results = pipe.classify([img for _, img in pending])
        for (k, _), res in zip(pending, results, strict=True):
            entries[k].update(
                label=res.label,
                confidence=res.confidence,
                regions=[
                    {
                        "box": r.region.box,
                        "label": r.label,
                        "confidence": round(r.confidence, 6),
                        "source": r.region.source,
                    }
                    for r in res.regions
                ],
                ir=res.ir,
                regions_evaluated=res.evaluated,
            )
        pending.clear()

    for k, f in enumerate(files):
        try:
            pending.append((k, load_image(f)))
        except ImageError as e:
            entries[k].update(label=None, confidence=None, regions=[], error=str(e))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()

    def human(rows: list[dict[str, Any]]) -> str:
        lines = []
        for r in rows:
            if r.get("error"):
                lines.append(f"{r['file']}: error: {r['error']}")
                continue
            where = "; ".join(f"{g['label']} {g['confidence']:.2f} at {g['box']}" for g in r["regions"])
            lines.append(
                f"{r['file']}: {r['label']} {r['confidence']:.3f}"
                + (" (ir)" if r["ir"] else "")
                + (f"  [{where}]" if where else "")
            )
        return "\n".join(lines)

    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
    else:
        click.echo(human(entries))
    if any(e.get("error") for e in entries):
        raise SystemExit(1)
