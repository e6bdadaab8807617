"""The registry database: one SQLite file (WAL) holding datasets, runs, trials and model versions.

Other domains (approvals, releases, the dashboard, fleet lineage) read and change model versions
only through :class:`Registry`, so the gate rule ("a model that failed the gate never leaves
candidate/rejected/archived") lives in one place.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from cloud.registry import datasets as _datasets
from cloud.registry import models as _models
from cloud.registry.audit import AuditLog
from cloud.registry.errors import RegistryError

BUSY_TIMEOUT_MS = 10_000


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) an SQLite file in WAL mode with a busy timeout.

    WAL lets the dashboard read while a training run writes; the timeout makes concurrent CLI
    commands wait instead of failing with "database is locked".
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.enable_wal()
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = NORMAL")
    except (OSError, sqlite3.Error) as e:
        raise RegistryError(
            f"cannot open registry database {p}: {e}; check the path and permissions (cloud config data_dir)"
        ) from e
    return db


class Registry(_datasets.DatasetTables, _models.ModelTables):
    """The cloud registry. Methods are grouped by concern in ``datasets.py`` and ``models.py``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_db(self.path)
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        try:
            _datasets.ensure_schema(self.db)
            _models.ensure_schema(self.db)
        except sqlite3.Error as e:
            raise RegistryError(f"cannot create registry tables in {self.path}: {e}") from e

    @property
    def audit(self) -> AuditLog:
        """The append-only audit log kept in the same database file."""
        return AuditLog(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
