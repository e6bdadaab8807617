"""The cloud's paths come from one object: defaults under data_dir, each override honoured, and
no module joins ``data_dir`` with a literal of its own."""

from __future__ import annotations

import ast
from pathlib import Path

from cloud.config import CloudConfig

REPO = Path(__file__).resolve().parent.parent


def test_defaults_all_live_under_data_dir(tmp_path: Path) -> None:
    p = CloudConfig.model_validate({"data_dir": str(tmp_path)}).paths
    assert p.data_dir == tmp_path
    assert (p.registry_db, p.fleet_db, p.release_db, p.dashboard_db) == (
        tmp_path / "registry.db",
        tmp_path / "fleet.db",
        tmp_path / "release.db",
        tmp_path / "dashboard.db",
    )
    assert p.repo_dir == tmp_path / "tuf-repo"
    assert p.keys_dir == tmp_path / "keys"
    assert p.snapshots_dir == tmp_path / "snapshots"
    assert p.inbox_dir == tmp_path / "ingest"
    assert p.feature_cache_dir == tmp_path / "feature-cache"
    every = [v for k, v in vars(p).items() if k != "data_dir"]
    assert all(v.parent == tmp_path for v in every), every
    assert len(set(every)) == len(every), "two paths share one file"


def test_overrides_are_honoured(tmp_path: Path) -> None:
    cfg = CloudConfig.model_validate(
        {
            "data_dir": str(tmp_path / "d"),
            "release": {"keys_dir": str(tmp_path / "k"), "broker_dir": str(tmp_path / "b")},
            "fleet": {"snapshots_dir": str(tmp_path / "s")},
            "dashboard": {"users_db": str(tmp_path / "u.db")},
            "train": {"feature_cache_dir": str(tmp_path / "f")},
        }
    )
    p = cfg.paths
    assert (p.keys_dir, p.broker_dir, p.snapshots_dir, p.dashboard_db, p.feature_cache_dir) == (
        tmp_path / "k",
        tmp_path / "b",
        tmp_path / "s",
        tmp_path / "u.db",
        tmp_path / "f",
    )
    assert p.registry_db == tmp_path / "d" / "registry.db"


def _joins_data_dir(node: ast.AST) -> bool:
    """``<...>.data_dir / <anything>`` or ``data_dir / <anything>``."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)):
        return False
    left = node.left
    return (isinstance(left, ast.Attribute) and left.attr == "data_dir") or (
        isinstance(left, ast.Name) and left.id == "data_dir"
    )


def test_no_module_derives_its_own_path_from_data_dir() -> None:
    allowed = {"cloud/paths.py"}
    found = []
    for f in sorted((REPO / "cloud").rglob("*.py")):
        rel = str(f.relative_to(REPO))
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(f.read_text(), rel)):
            if _joins_data_dir(node):
                found.append(f"{rel}:{getattr(node, 'lineno', '?')}")
    assert not found, f"derive these from cfg.paths (cloud/paths.py) instead: {found}"
