"""What ``uninstall-edge.sh --purge`` is about to destroy: unsent predictions and secrets.

Run with the system ``python3`` (standard library only): the purge may run after a plain
uninstall already removed the venv. Reads the box's ``edge.toml`` to find the outbox and every
secret file the config names, wherever they are, and counts the predictions still waiting in the
outbox, so the script can say how many would be lost and insist on ``--yes``.

Output, one tab-separated line each (the script reads it)::

    outbox  PATH  COUNT      COUNT -1 = cannot be read (treated as "maybe some")
    snapshots  PATH  COUNT
    secret  PATH
"""

from __future__ import annotations

import sqlite3
import sys
import tomllib
from pathlib import Path
from typing import Any

# Secret-bearing keys of the edge config: {file = "..."} references and TLS client files.
SECRET_REFS = (("mqtt", "password"), ("status_page", "token"))
TLS_FILES = ("key_file", "cert_file")
DEFAULT_SECRET_NAMES = ("status-token", "mqtt-password")


def _get(data: dict[str, Any], *keys: str) -> Any:
    cur: Any = data
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def plan_paths(config: dict[str, Any], etc: Path, state: Path) -> tuple[Path, Path, list[Path]]:
    """(outbox, snapshots folder, secret files) named by ``config``; pure, no file access."""
    state_dir = Path(str(config.get("state_dir") or state))
    outbox = Path(str(_get(config, "outbox", "path") or state_dir / "outbox.db"))
    secrets: list[Path] = [etc / name for name in DEFAULT_SECRET_NAMES]
    for section, key in SECRET_REFS:
        ref = _get(config, section, key)
        if isinstance(ref, dict) and isinstance(ref.get("file"), str):
            secrets.append(Path(ref["file"]))
    tls = _get(config, "mqtt", "tls")
    if isinstance(tls, dict):
        secrets += [Path(tls[k]) for k in TLS_FILES if isinstance(tls.get(k), str)]
    unique = list(dict.fromkeys(secrets))
    return outbox, state_dir / "snapshots", unique


def count_predictions(db: Path) -> int:
    """Rows waiting in the outbox; 0 without a file, -1 when it exists but cannot be read."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: purge_plan.py ROOT ETC STATE EDGE_TOML", file=sys.stderr)
        return 64
    root, etc, state, toml_path = argv[1], Path(argv[2]), Path(argv[3]), Path(argv[1] + argv[4])
    try:
        config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        print(f"cannot read {toml_path} ({e}); using the default paths", file=sys.stderr)
        config = {}
    outbox, snapshots, secrets = plan_paths(config, etc, state)

    def rooted(p: Path) -> Path:
        return Path(root + str(p)) if root else p

    print(f"outbox\t{outbox}\t{count_predictions(rooted(outbox))}")
    snaps = rooted(snapshots)
    n_snaps = sum(1 for p in snaps.rglob("*") if p.is_file()) if snaps.is_dir() else 0
    print(f"snapshots\t{snapshots}\t{n_snaps}")
    for s in secrets:
        if rooted(s).exists():
            print(f"secret\t{s}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
