"""Registry tables for dataset versions: the version row, its files, duplicates and quarantine."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlite_utils
from pydantic import BaseModel, Field

from cloud.registry.errors import NotFoundError
from cloud.registry.tx import transaction


class DatasetRecord(BaseModel):
    """A content-addressed dataset version: ``id`` is the SHA-256 of its manifest."""

    id: str
    source: str
    labels: list[str]
    counts: dict[str, dict[str, int]]
    n_files: int
    duplicates: int
    quarantined: int
    manifest_path: str
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: str = ""
    last_ingested_at: str = ""


class DatasetFile(BaseModel):
    sha256: str
    label: str
    split: str
    path: str
    width: int
    height: int
    bytes: int


class DuplicateFile(BaseModel):
    sha256: str
    path: str
    kept_path: str


class QuarantinedFile(BaseModel):
    path: str
    label: str
    reason: str
    detail: str


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _row_to_dataset(row: dict[str, Any]) -> DatasetRecord:
    return DatasetRecord(
        id=row["id"],
        source=row["source"],
        labels=json.loads(row["labels"]),
        counts=json.loads(row["counts"]),
        n_files=row["n_files"],
        duplicates=row["duplicates"],
        quarantined=row["quarantined"],
        manifest_path=row["manifest_path"],
        params=json.loads(row["params"] or "{}"),
        created_at=row["created_at"],
        last_ingested_at=row["last_ingested_at"],
    )


class DatasetTables:
    db: sqlite_utils.Database

    def register_dataset(
        self,
        record: DatasetRecord,
        files: Iterable[DatasetFile],
        duplicates: Iterable[DuplicateFile] = (),
        quarantine: Iterable[QuarantinedFile] = (),
    ) -> bool:
        """Store a dataset version in one transaction; returns False when the id already existed.

        Re-ingesting unchanged data yields the same id: the files are then already stored. The
        version keeps the source it was first ingested from (training and lineage read files
        from it; repointing it to a copy broke training once the copy was gone): another folder
        holding the same data is recorded in ``dataset_sources``, and only the time of this
        ingest (and, for the same folder, its duplicate/quarantine lists) is refreshed.
        """
        stamp = now()
        with transaction(self.db) as conn:
            existing = conn.execute(
                "SELECT created_at, source FROM datasets WHERE id = ?", (record.id,)
            ).fetchone()
            created = existing[0] if existing else stamp
            if existing and existing[1] != record.source:
                conn.execute("UPDATE datasets SET last_ingested_at = ? WHERE id = ?", (stamp, record.id))
                conn.execute(
                    "INSERT INTO dataset_sources (dataset_id, source, first_ingested_at, last_ingested_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(dataset_id, source) DO UPDATE SET "
                    "last_ingested_at = excluded.last_ingested_at",
                    (record.id, record.source, stamp, stamp),
                )
                return False
            conn.execute(
                "INSERT OR REPLACE INTO datasets (id, source, labels, counts, n_files, duplicates, "
                "quarantined, manifest_path, params, created_at, last_ingested_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.source,
                    json.dumps(record.labels),
                    json.dumps(record.counts),
                    record.n_files,
                    record.duplicates,
                    record.quarantined,
                    record.manifest_path,
                    json.dumps(record.params, sort_keys=True),
                    created,
                    stamp,
                ),
            )
            conn.execute(
                "INSERT INTO dataset_sources (dataset_id, source, first_ingested_at, last_ingested_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(dataset_id, source) DO UPDATE SET "
                "last_ingested_at = excluded.last_ingested_at",
                (record.id, record.source, stamp, stamp),
            )
            if not existing:
                conn.executemany(
                    "INSERT INTO dataset_files (dataset_id, sha256, label, split, path, width, height, bytes)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (record.id, f.sha256, f.label, f.split, f.path, f.width, f.height, f.bytes)
                        for f in files
                    ),
                )
            conn.execute("DELETE FROM dataset_duplicates WHERE dataset_id = ?", (record.id,))
            conn.executemany(
                "INSERT OR REPLACE INTO dataset_duplicates (dataset_id, sha256, path, kept_path) "
                "VALUES (?, ?, ?, ?)",
                ((record.id, d.sha256, d.path, d.kept_path) for d in duplicates),
            )
            conn.execute("DELETE FROM dataset_quarantine WHERE dataset_id = ?", (record.id,))
            conn.executemany(
                "INSERT OR REPLACE INTO dataset_quarantine (dataset_id, path, label, reason, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                ((record.id, q.path, q.label, q.reason, q.detail) for q in quarantine),
            )
        return existing is None

    def dataset_sources(self, dataset_id: str) -> list[dict[str, Any]]:
        """Every folder this version was ingested from, the kept (first) one first."""
        ds = self.get_dataset(dataset_id)
        rows = list(
            self.db["dataset_sources"].rows_where(
                "dataset_id = ?", [ds.id], order_by="first_ingested_at, rowid"
            )
        )
        kept = [r for r in rows if r["source"] == ds.source] or [
            # a version registered before sources were recorded
            {
                "dataset_id": ds.id,
                "source": ds.source,
                "first_ingested_at": ds.created_at,
                "last_ingested_at": None,
            }
        ]
        return kept + [r for r in rows if r["source"] != ds.source]

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        """Look up a dataset by its full id or a unique prefix (at least 6 characters)."""
        full = self.resolve_dataset_id(dataset_id)
        row = next(self.db["datasets"].rows_where("id = ?", [full]))
        return _row_to_dataset(row)

    def resolve_dataset_id(self, dataset_id: str) -> str:
        if len(dataset_id) < 6:
            raise NotFoundError(
                f"dataset id {dataset_id!r} is too short: give at least 6 characters "
                "(see `parkwatch cloud datasets list`)"
            )
        rows = [r["id"] for r in self.db["datasets"].rows_where("id LIKE ?", [dataset_id + "%"], limit=2)]
        if not rows:
            raise NotFoundError(
                f"no dataset {dataset_id!r} in the registry: run `parkwatch cloud ingest "
                "SOURCE` first, or see `parkwatch cloud datasets list`"
            )
        if len(rows) > 1:
            raise NotFoundError(f"dataset prefix {dataset_id!r} is ambiguous: give more characters")
        return str(rows[0])

    def list_datasets(self) -> list[DatasetRecord]:
        return [_row_to_dataset(r) for r in self.db["datasets"].rows_where(order_by="created_at desc")]

    def dataset_files(self, dataset_id: str, split: str | None = None) -> list[DatasetFile]:
        """Files of a dataset in manifest order (by content hash), optionally one split only."""
        full = self.resolve_dataset_id(dataset_id)
        where, args = "dataset_id = ?", [full]
        if split is not None:
            where += " AND split = ?"
            args.append(split)
        return [
            DatasetFile(**{k: r[k] for k in DatasetFile.model_fields})
            for r in self.db["dataset_files"].rows_where(where, args, order_by="sha256")
        ]

    def dataset_duplicates(self, dataset_id: str) -> list[DuplicateFile]:
        full = self.resolve_dataset_id(dataset_id)
        return [
            DuplicateFile(sha256=r["sha256"], path=r["path"], kept_path=r["kept_path"])
            for r in self.db["dataset_duplicates"].rows_where("dataset_id = ?", [full], order_by="path")
        ]

    def dataset_quarantine(self, dataset_id: str) -> list[QuarantinedFile]:
        full = self.resolve_dataset_id(dataset_id)
        return [
            QuarantinedFile(path=r["path"], label=r["label"], reason=r["reason"], detail=r["detail"])
            for r in self.db["dataset_quarantine"].rows_where("dataset_id = ?", [full], order_by="path")
        ]
