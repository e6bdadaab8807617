"""``parkwatch cloud init DIR``: a newcomer without /etc/parkwatch gets a working install."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from click.testing import CliRunner

from cloud.config import load
from shared.cli import main


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), env=env)
    return r.exit_code, r.output


def test_missing_config_points_to_init(tmp_path: Path) -> None:
    code, out = _run("cloud", "datasets", "list", "--config", str(tmp_path / "nope.toml"))
    assert code == 2
    assert "parkwatch cloud init DIR" in out


def test_init_writes_a_config_every_command_accepts(tmp_path: Path, pets_sample: Path) -> None:
    root = tmp_path / "lap"
    code, out = _run("cloud", "init", str(root))
    assert code == 0, out
    cfg_path = root / "cloud.toml"
    assert f"export PARKWATCH_CONFIG={cfg_path}" in out
    cfg = load(cfg_path)
    assert cfg.data_dir == root / "data" and cfg.data_dir.is_dir()
    assert cfg.release.approver_keys_dir == root / "approver-keys"
    secret = root / "secrets" / "dashboard-session"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) >= 16
    code, out = _run("cloud", "config", "check", str(cfg_path))
    assert code == 0, out
    # The config is found through the environment, as the printed next step says, and the
    # guide's next command works with it.
    lake = tmp_path / "lake"
    for label in ("cat", "dog"):
        (lake / label).mkdir(parents=True)
        for src in sorted((pets_sample / label).glob("*.jpg"))[:6]:
            (lake / label / src.name).symlink_to(src)
    env = {**os.environ, "PARKWATCH_CONFIG": str(cfg_path)}
    code, out = _run("cloud", "ingest", str(lake), env=env)
    assert code == 0, out
    code, out = _run("cloud", "datasets", "list", env=env)
    assert code == 0 and "files=12" in out, out


def test_init_never_overwrites_a_config(tmp_path: Path) -> None:
    root = tmp_path / "lap"
    assert _run("cloud", "init", str(root))[0] == 0
    before = (root / "cloud.toml").read_text()
    code, out = _run("cloud", "init", str(root))
    assert code == 1 and "exists already" in out
    assert (root / "cloud.toml").read_text() == before


def test_init_json_names_what_it_wrote(tmp_path: Path) -> None:
    import json

    root = tmp_path / "lap"
    code, out = _run("cloud", "init", str(root), "--json")
    assert code == 0, out
    o = json.loads(out)
    assert o["ok"] is True
    assert o["config"] == str(root / "cloud.toml") and (root / "cloud.toml").is_file()
    assert o["approver_keys_dir"] == str(root / "approver-keys")
    assert f"export PARKWATCH_CONFIG={root / 'cloud.toml'}" in o["next"]
    code, out = _run("cloud", "init", str(root), "--json")
    assert code == 1
    assert json.loads(out.splitlines()[0])["ok"] is False
