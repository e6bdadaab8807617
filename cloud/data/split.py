"""Pure functions that make a dataset version: de-duplication, the split and the manifest id.

The split side of a file depends only on its content hash, so adding or removing other files
never moves it between train and test; stratification comes from applying the same rule within
every label (each label gets ~``test_fraction`` of its files in test).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

SPLIT_SALT = b"parkwatch-split-v1:"
HASH_SPACE = float(1 << 64)


@dataclass(frozen=True)
class Sample:
    sha256: str
    label: str
    rel: str
    width: int
    height: int
    size: int


def unit(sha256: str, salt: bytes = SPLIT_SALT) -> float:
    """A hash-derived number in [0, 1), uniform over contents and independent per salt."""
    return int.from_bytes(hashlib.sha256(salt + sha256.encode()).digest()[:8], "big") / HASH_SPACE


def side(sha256: str, test_fraction: float) -> str:
    return "test" if unit(sha256) < test_fraction else "train"


@dataclass
class Deduped:
    kept: list[Sample]
    duplicates: list[tuple[Sample, Sample]]  # (dropped, kept)
    conflicts: list[tuple[Sample, str]]  # (sample, other labels) same bytes under several labels


def dedupe(samples: Iterable[Sample]) -> Deduped:
    """Keep the first path (in path order) of each content; same bytes under two labels keeps neither."""
    by_hash: dict[str, list[Sample]] = {}
    for s in samples:
        by_hash.setdefault(s.sha256, []).append(s)
    out = Deduped([], [], [])
    for group in by_hash.values():
        group.sort(key=lambda s: (len(s.rel), s.rel))  # "x.jpg" before "x(1).jpg"
        labels = sorted({s.label for s in group})
        if len(labels) > 1:
            out.conflicts += [(s, ", ".join(lab for lab in labels if lab != s.label)) for s in group]
            continue
        out.kept.append(group[0])
        out.duplicates += [(s, group[0]) for s in group[1:]]
    out.kept.sort(key=lambda s: s.sha256)
    out.duplicates.sort(key=lambda d: d[0].rel)
    out.conflicts.sort(key=lambda c: c[0].rel)
    return out


def manifest_lines(kept: list[Sample], test_fraction: float) -> list[dict[str, str]]:
    return [
        {"sha256": s.sha256, "label": s.label, "split": side(s.sha256, test_fraction), "path": s.rel}
        for s in sorted(kept, key=lambda s: s.sha256)
    ]


def manifest_bytes(lines: list[dict[str, str]]) -> bytes:
    """Canonical JSON Lines: one object per file, sorted keys, sorted by hash."""
    return b"".join(
        json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n" for line in lines
    )


def dataset_id(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()


def counts(lines: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"train": {}, "test": {}, "total": {}}
    for line in lines:
        for key in (line["split"], "total"):
            out[key][line["label"]] = out[key].get(line["label"], 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}
