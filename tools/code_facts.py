"""Before/after facts about the code base that anyone can re-check (issue 14's note).

Prints, for the checkout named on the command line (default: this one):

* the ten largest Python modules by line count (``shared/``, ``edge/``, ``cloud/``);
* the mypy settings in ``pyproject.toml`` (``[tool.mypy]`` and each override);
* how often the word ``Any`` appears in ``cloud/`` (word-matched, comments and strings included,
  so the figure is the plain ``grep -w`` count and not an opinion).

Why a script rather than a paragraph: the figures are compared between two commits (``python
tools/code_facts.py /path/to/other/checkout``), so both must be produced the same way. It reads
files only: no imports of parkwatch, no git.

    python tools/code_facts.py [ROOT] [--top N] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

PACKAGES = ("shared", "edge", "cloud")
ANY_WORD = re.compile(r"\bAny\b")


def line_count(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def largest_modules(root: Path, top: int) -> list[tuple[str, int]]:
    sizes = [
        (str(p.relative_to(root)), line_count(p))
        for pkg in PACKAGES
        if (root / pkg).is_dir()
        for p in sorted((root / pkg).rglob("*.py"))
    ]
    sizes.sort(key=lambda item: (-item[1], item[0]))
    return sizes[:top]


def mypy_settings(root: Path) -> dict[str, Any]:
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mypy: dict[str, Any] = dict(data.get("tool", {}).get("mypy", {}))
    overrides = mypy.pop("overrides", [])
    return {"global": mypy, "overrides": overrides}


def any_count(root: Path) -> tuple[int, int]:
    """Occurrences of the word ``Any`` in ``cloud/*.py``, and how many files hold at least one."""
    total = files = 0
    for p in sorted((root / "cloud").rglob("*.py")):
        n = len(ANY_WORD.findall(p.read_text(encoding="utf-8")))
        total += n
        files += n > 0
    return total, files


def facts(root: Path, top: int) -> dict[str, Any]:
    total, files = any_count(root)
    return {
        "root": str(root),
        "largest_modules": [{"path": p, "lines": n} for p, n in largest_modules(root, top)],
        "python_lines": sum(n for _, n in largest_modules(root, 10**9)),
        "mypy": mypy_settings(root),
        "any_in_cloud": {"occurrences": total, "files": files},
    }


def render(f: dict[str, Any]) -> str:
    out = [f"code facts for {f['root']}", "", f"largest modules (of {f['python_lines']} lines in all):"]
    out += [f"  {m['lines']:6d}  {m['path']}" for m in f["largest_modules"]]
    out += ["", "mypy settings (pyproject.toml):"]
    out += [f"  {k} = {json.dumps(v)}" for k, v in f["mypy"]["global"].items()]
    for o in f["mypy"]["overrides"]:
        mods = o.get("module")
        rest = ", ".join(f"{k} = {json.dumps(v)}" for k, v in o.items() if k != "module")
        out.append(f"  override {json.dumps(mods)}: {rest}")
    a = f["any_in_cloud"]
    out += ["", f"`Any` in cloud/ (word-matched): {a['occurrences']} in {a['files']} files"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=Path(__file__).resolve().parent.parent, type=Path)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    if not (root / "pyproject.toml").is_file() or not (root / "cloud").is_dir():
        print(f"{root} is not a parkwatch checkout (no pyproject.toml or cloud/); name one", file=sys.stderr)
        return 2
    f = facts(root, args.top)
    print(json.dumps(f, indent=2) if args.json else render(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
