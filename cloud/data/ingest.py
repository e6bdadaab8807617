"""``parkwatch cloud ingest``: a data-lake folder → a content-addressed dataset version.

Streaming end to end: the walker yields paths lazily, worker processes read, hash and check
files in chunks, and only small per-file records are held in memory (about 200 bytes per file,
so 100,000 files fit easily). The dataset is registered in one transaction after everything is
known, so an error or Ctrl-C registers nothing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cloud.data import split as sp
from cloud.data.config import IngestConfig
from cloud.data.errors import IngestError
from cloud.data.scan import Candidate, walk
from cloud.data.validate import Checked, check_file
from cloud.registry.datasets import DatasetFile, DatasetRecord, DuplicateFile, QuarantinedFile
from cloud.registry.store import Registry
from shared.atomic import atomic_write_bytes, atomic_write_json

CHUNK = 32


@dataclass
class IngestResult:
    dataset_version: str
    new: bool
    source: str
    labels: list[str]
    counts: dict[str, dict[str, int]]
    duplicates: list[dict[str, str]]
    quarantined: list[dict[str, str]]
    manifest: str
    files_seen: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version,
            "new": self.new,
            "source": self.source,
            "labels": self.labels,
            "counts": self.counts,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "manifest": self.manifest,
            "files_seen": self.files_seen,
            **self.extra,
        }


def _workers(cfg: IngestConfig) -> int:
    return cfg.workers or os.cpu_count() or 1


def _checked_stream(
    cands: list[Candidate], cfg: IngestConfig, progress: Callable[[int], None]
) -> Iterator[tuple[Candidate, Checked]]:
    to_check = [c for c in cands if c.problem is None]
    for c in cands:
        if c.problem is not None:
            progress(1)
            yield c, Checked(str(c.path), None, 0, problem=c.problem)
    fn = partial(check_file, min_side=cfg.min_side, max_bytes=cfg.max_bytes)
    paths = [str(c.path) for c in to_check]
    n = _workers(cfg)
    if n == 1 or len(paths) < 2 * CHUNK:
        for c, p in zip(to_check, paths, strict=True):
            progress(1)
            yield c, fn(p)
        return
    # fork keeps start-up cheap; the workers only run check_file (no threads, no torch).
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by a hostile file (decoder
    # crash, OOM) raises BrokenProcessPool here instead of hanging the ingest forever.
    try:
        with ProcessPoolExecutor(n, mp_context=ctx) as pool:
            for c, res in zip(to_check, pool.map(fn, paths, chunksize=CHUNK), strict=True):
                progress(1)
                yield c, res
    except BrokenProcessPool as e:
        raise IngestError(
            "a validation worker died (a file crashed the image decoder or memory ran out); nothing was "
            "registered. Run again with ingest.workers = 1 to find the file, then move it out of the lake"
        ) from e


def _progress_bar(total: int | None, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="file",
        desc="ingest",
        file=sys.stderr,
        disable=not enabled or None,
        dynamic_ncols=True,
        leave=False,
    )


def ingest(
    source: Path, registry: Registry, datasets_dir: Path, cfg: IngestConfig, show_progress: bool = True
) -> IngestResult:
    """Validate, de-duplicate, split and register ``source``; idempotent for unchanged data."""
    source = Path(source).expanduser()
    root = source.resolve()
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.extensions}
    cands = list(walk(root, exts))  # paths only: cheap, and the total drives the progress bar
    if not cands:
        raise IngestError(
            f"{source} has label folders but no files in them; add images (one folder per "
            "label) and run ingest again"
        )
    samples: list[sp.Sample] = []
    quarantined: list[QuarantinedFile] = []
    with _progress_bar(len(cands), show_progress) as bar:
        for cand, res in _checked_stream(cands, cfg, bar.update):
            if res.problem is not None:
                quarantined.append(
                    QuarantinedFile(
                        path=cand.rel, label=cand.label, reason=res.problem[0], detail=res.problem[1]
                    )
                )
            else:
                assert res.sha256 is not None
                samples.append(sp.Sample(res.sha256, cand.label, cand.rel, res.width, res.height, res.size))
    dd = sp.dedupe(samples)
    quarantined += [
        QuarantinedFile(
            path=s.rel,
            label=s.label,
            reason="label-conflict",
            detail=f"same content also filed under {others}",
        )
        for s, others in dd.conflicts
    ]
    quarantined.sort(key=lambda q: q.path)
    lines = sp.manifest_lines(dd.kept, cfg.test_fraction)
    counts = sp.counts(lines)
    labels = _check_usable(source, sorted({c.label for c in cands}), counts, quarantined)
    manifest = sp.manifest_bytes(lines)
    version = sp.dataset_id(manifest)
    vdir = datasets_dir / version
    atomic_write_bytes(vdir / "manifest.jsonl", manifest)
    duplicates = [DuplicateFile(sha256=d.sha256, path=d.rel, kept_path=k.rel) for d, k in dd.duplicates]
    atomic_write_json(
        vdir / "report.json",
        {
            "source": str(root),
            "duplicates": [d.model_dump() for d in duplicates],
            "quarantined": [q.model_dump() for q in quarantined],
        },
    )
    record = DatasetRecord(
        id=version,
        source=str(root),
        labels=labels,
        counts=counts,
        n_files=len(lines),
        duplicates=len(duplicates),
        quarantined=len(quarantined),
        manifest_path=str(vdir / "manifest.jsonl"),
        params={
            "min_side": cfg.min_side,
            "test_fraction": cfg.test_fraction,
            "split_rule": "sha256-salted-v1",
            "extensions": sorted(exts),
        },
    )
    by_hash = {s.sha256: s for s in dd.kept}
    files = (
        DatasetFile(
            sha256=ln["sha256"],
            label=ln["label"],
            split=ln["split"],
            path=ln["path"],
            width=by_hash[ln["sha256"]].width,
            height=by_hash[ln["sha256"]].height,
            bytes=by_hash[ln["sha256"]].size,
        )
        for ln in lines
    )
    new = registry.register_dataset(record, files, duplicates, quarantined)
    kept = registry.get_dataset(version).source  # the first source stays; another is only recorded
    registry.audit.append(
        "ingest",
        "dataset.registered" if new else "dataset.reingested",
        f"dataset:{version}",
        {
            "source": str(root),
            "kept_source": kept,
            "counts": counts,
            "duplicates": len(duplicates),
            "quarantined": len(quarantined),
        },
    )
    return IngestResult(
        dataset_version=version,
        new=new,
        source=str(root),
        extra={"kept_source": kept, "sources": [s["source"] for s in registry.dataset_sources(version)]},
        labels=labels,
        counts=counts,
        duplicates=[{"path": d.path, "kept": d.kept_path, "sha256": d.sha256} for d in duplicates],
        quarantined=[
            {"path": q.path, "label": q.label, "reason": q.reason, "detail": q.detail} for q in quarantined
        ],
        manifest=str(vdir / "manifest.jsonl"),
        files_seen=len(cands),
    )


def _check_usable(
    source: Path, labels: list[str], counts: dict[str, dict[str, int]], quarantined: list[QuarantinedFile]
) -> list[str]:
    """Refuse a dataset a model cannot be trained and tested on; say which label lacks what."""
    usable = [lab for lab in labels if counts["total"].get(lab)]
    if len(usable) < 2:
        reasons = sorted({q.reason for q in quarantined})
        raise IngestError(
            f"{source}: only {len(usable)} label(s) have valid images ({', '.join(usable) or 'none'}); "
            f"need at least two. {len(quarantined)} file(s) were quarantined"
            + (f" ({', '.join(reasons)})" if reasons else "")
            + "; nothing was registered"
        )
    for lab in usable:
        for split in ("train", "test"):
            if not counts[split].get(lab):
                raise IngestError(
                    f"{source}: label {lab!r} has {counts['total'][lab]} valid image(s) and none fall in the "
                    f"{split} split; add more images of {lab} (a few dozen at least); nothing was registered"
                )
    return usable
