"""Which package may import which, checked on the source so a cycle cannot creep back.

packaging turns what training made into a package; it must not reach back into training (the
untrained baseline, which needs the training backbone, lives in cloud/training/untrained.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module each file imports, at top level or inside a function."""
    out: dict[str, set[str]] = {}
    for f in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(f.relative_to(REPO))] = names
    return out


def test_packaging_never_imports_training() -> None:
    bad = {
        f: sorted(m for m in mods if m == "cloud.training" or m.startswith("cloud.training."))
        for f, mods in imported_modules(REPO / "cloud" / "packaging").items()
    }
    assert not {f: m for f, m in bad.items() if m}, "packaging imports training (the cycle is back)"


def test_the_checker_sees_function_level_imports() -> None:
    """training imports packaging inside a function (features.py); the walk must find it."""
    mods = imported_modules(REPO / "cloud" / "training")
    assert "cloud.packaging.export" in mods["cloud/training/features.py"]
