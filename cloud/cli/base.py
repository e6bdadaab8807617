from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import BaseModel

from cloud.config import DEFAULT_PATH
from cloud.dashboard.config import read_session_secret
from shared.clitools import emit, handle_errors, json_option
from shared.config import SecretRef
from shared.errors import ConfigError, SecretError

if TYPE_CHECKING:
    from cloud.config import CloudConfig


@click.group()
def config() -> None:
    """Inspect the cloud config."""


def secret_refs(node: Any, prefix: str = "") -> Iterator[tuple[str, SecretRef]]:
    """Every :class:`SecretRef` the config names, with its dotted key (``dashboard.session_secret``)."""
    if isinstance(node, SecretRef):
        yield prefix, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from secret_refs(getattr(node, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from secret_refs(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from secret_refs(v, f"{prefix}[{i}]")


def _unused(cfg: CloudConfig, key: str) -> str | None:
    """Why the secret at ``key`` is not read by anything this config runs (None: it is needed)."""
    if key.startswith("dashboard.") and not cfg.dashboard.enabled:
        return "dashboard.enabled is false"
    if key == "governance.webhook_secret" and not cfg.governance.webhook_url:
        return "governance.webhook_url is not set"
    return None


def _where(ref: SecretRef) -> str:
    parts = [f"environment variable {ref.env}" if ref.env else "", f"file {ref.file}" if ref.file else ""]
    return " or ".join(p for p in parts if p)


def check_secrets(cfg: CloudConfig) -> list[dict[str, Any]]:
    """Try to read every secret the config names, as ``serve`` would; one entry per secret."""
    out: list[dict[str, Any]] = []
    for key, ref in secret_refs(cfg):
        entry: dict[str, Any] = {"key": key, "source": _where(ref), "ok": True, "problem": None}
        entry["unused"] = _unused(cfg, key)
        try:
            if key == "dashboard.session_secret":
                read_session_secret(ref)  # also the length the dashboard insists on
            else:
                ref.resolve(key)
        except SecretError as e:
            where = "" if entry["source"] in e.problem else f" ({entry['source']})"
            entry["ok"], entry["problem"] = False, e.problem + where
        out.append(entry)
    return out


@config.command("check")
@click.argument(
    "path", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_PATH, envvar="PARKWATCH_CONFIG"
)
@json_option
@handle_errors
def config_check(path: Path, as_json: bool) -> None:
    """Validate PATH and read every secret it names; exit 2 naming the key if one is wrong.

    PATH defaults to $PARKWATCH_CONFIG, then the installed path.
    """
    from cloud.config import load

    cfg = load(path)
    secrets = check_secrets(cfg)
    bad = [s for s in secrets if not s["ok"] and not s["unused"]]
    if bad:
        first, rest = bad[0], bad[1:]
        also = "; ".join(f"{s['key']}: {s['problem']}" for s in rest)
        raise ConfigError(str(path), first["key"], first["problem"] + (f" (also: {also})" if also else ""))
    warnings = [
        f"{s['key']} cannot be read ({s['problem']}); not needed while {s['unused']}"
        for s in secrets
        if not s["ok"]
    ]
    if not cfg.data_dir.exists():
        warnings.append(
            f"data_dir {cfg.data_dir} does not exist yet: `parkwatch cloud serve` creates it; "
            "reporting commands (health, alerts, analyze, ...) refuse to run until then"
        )
    emit(
        {
            "ok": True,
            "file": str(path),
            "data_dir": str(cfg.data_dir),
            "secrets": secrets,
            "warnings": warnings,
        },
        as_json,
        lambda s: (
            f"{path}: ok (data in {s['data_dir']}"
            + (f"; {sum(x['ok'] for x in s['secrets'])} secret(s) readable" if s["secrets"] else "")
            + ")"
            + "".join(f"\nwarning: {w}" for w in s["warnings"])
        ),
    )
