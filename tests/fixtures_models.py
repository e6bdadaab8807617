"""Session fixtures for real model packages, cached across runs keyed by the code that builds them.

Registered from tests/conftest.py via ``pytest_plugins``. The cache lives in
``$PARKWATCH_TEST_CACHE`` or ``<repo>/.cache/test-models`` (git-ignored); a change to any file
that shapes the package (packaging code, backbone, package format, preprocessing) builds anew.
Concurrent pytest processes share one build through a file lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE_ENV = "PARKWATCH_TEST_CACHE"
KEY_SOURCES = [
    *sorted((REPO / "cloud" / "packaging").glob("*.py")),
    REPO / "cloud" / "training" / "backbone.py",
    REPO / "cloud" / "training" / "untrained.py",
    REPO / "shared" / "modelpkg.py",
    REPO / "edge" / "preprocess.py",
]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / ".cache" / "test-models")


def code_key(extra: list[Path] | None = None) -> str:
    from cloud.packaging.lineage import source_digest

    return source_digest([*KEY_SOURCES, *(extra or [])])[:16]


def cached_package(name: str, build: Callable[[Path], Path], extra_sources: list[Path] | None = None) -> Path:
    """Build once per code version into the cache (under a lock) and return the package folder."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    slot = root / f"{name}-{code_key(extra_sources)}"
    done = slot / ".complete"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(slot, ignore_errors=True)
            pkg = build(slot)
            done.write_text(pkg.relative_to(slot).as_posix())
        return slot / done.read_text().strip()


@pytest.fixture(scope="session")
def baseline_package(pets_sample: Path) -> Path:
    """The untrained baseline package folder (model.onnx, manifest, golden/, card, lineage).

    Treat it as read-only: copy it (``shutil.copytree``) before changing anything.
    Its tarball sits beside it as ``<folder>.tar.gz``.
    """
    from cloud.training.untrained import build_baseline_package

    return cached_package("baseline", lambda out: build_baseline_package(out))
