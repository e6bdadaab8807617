"""The registry database: one SQLite file (WAL) holding datasets, runs, trials and model versions
(tables and opener: cloud/registry/schema.py).

Other domains (approvals, releases, the dashboard, fleet lineage) read and change model versions
only through :class:`Registry`, so the gate rule ("a model that failed the gate never leaves
candidate/rejected/archived") lives in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.registry import datasets as _datasets
from cloud.registry import models as _models
from cloud.registry.audit import AuditLog
from cloud.registry.schema import open_db

__all__ = ["Registry", "open_db"]


class Registry(_datasets.DatasetTables, _models.ModelTables):
    """The cloud registry. Methods are grouped by concern in ``datasets.py`` and ``models.py``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_db(self.path)  # its tables: cloud/registry/schema.py

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
