"""``parkwatch cloud init DIR``: a working cloud install in a folder, for a laptop or a first try.

Why: every cloud command reads ``/etc/parkwatch/cloud.toml``, which a newcomer on a laptop does not
have and should not need root to create. ``init`` writes the same kind of config the demo writes
(data under DIR, a local broker, a session secret in a 0600 file, the approver's keys in their
own folder so they are never mixed with the server's online keys) and says what to run next.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import click
import tomli_w

from shared.atomic import atomic_write_text
from shared.clitools import emit, fail, handle_errors, json_option

#: the header ``init`` writes above the keys (TOML writers keep no comments, so they go here)
INIT_HEADER = """\
# written by 'parkwatch cloud init'; see provisioning/cloud.example.toml for every key.
# [release] approver_keys_dir: the approver's signing keys live apart from the server's online
# keys. On a real install that folder is on the approver's own token or machine, never on the server.
"""


def init_toml(root: Path, mqtt_port: int, dashboard_port: int) -> str:
    """The config ``init`` writes; every key is one ``provisioning/cloud.example.toml`` documents."""
    return INIT_HEADER + tomli_w.dumps(
        {
            "data_dir": str(root / "data"),
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
            "release": {"approver_keys_dir": str(root / "approver-keys")},
            "dashboard": {
                "host": "127.0.0.1",
                "port": dashboard_port,
                "session_secret": {"file": str(root / "secrets" / "dashboard-session")},
            },
        }
    )


def write_install(root: Path, mqtt_port: int = 1883, dashboard_port: int = 8000) -> Path:
    """Create DIR's folders, its session secret and ``cloud.toml``; refuse to overwrite a config."""
    cfg = root / "cloud.toml"
    if cfg.exists():
        raise FileExistsError(cfg)
    for sub in ("data", "approver-keys", "secrets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "secrets", 0o700)
    os.chmod(root / "approver-keys", 0o700)
    secret = root / "secrets" / "dashboard-session"
    if not secret.exists():
        atomic_write_text(secret, secrets.token_urlsafe(32) + "\n", mode=0o600)
    atomic_write_text(cfg, init_toml(root, mqtt_port, dashboard_port))
    return cfg


def _init_text(o: dict[str, Any]) -> str:
    lines = [
        f"wrote {o['config']}",
        f"data under {o['data_dir']}; approver keys under {o['approver_keys_dir']}",
        "next:",
    ]
    return "\n".join(lines + [f"  {step}" for step in o["next"]])


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--mqtt-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--dashboard-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@json_option
@handle_errors
def init(directory: Path, mqtt_port: int, dashboard_port: int, as_json: bool) -> None:
    """Write a working cloud config and its folders under DIRECTORY (no root needed; --json for scripts)."""
    root = directory.resolve()
    try:
        cfg = write_install(root, mqtt_port, dashboard_port)
    except FileExistsError:
        fail(f"{root / 'cloud.toml'} exists already; edit it, or pick another folder", as_json=as_json)
        return
    out = {
        "ok": True,
        "config": str(cfg),
        "data_dir": str(root / "data"),
        "approver_keys_dir": str(root / "approver-keys"),
        "next": [
            f"export PARKWATCH_CONFIG={cfg}",
            f"parkwatch cloud config check {cfg}",
            "parkwatch cloud ingest ./lake      # a folder with one sub-folder per label",
        ],
    }
    emit(out, as_json, _init_text)
