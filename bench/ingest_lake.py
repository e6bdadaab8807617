"""Issue 3 benchmark: data-lake ingest files/s against the raw read-and-hash rate of the same files.

Raw = the same worker processes only reading and SHA-256-hashing every file (the floor any
ingest must pay). Ingest = ``parkwatch cloud ingest`` end to end (walk, read, hash, header
parse, full-stream decode check, de-dup, split, manifest, registry transaction) into a temp
registry. Both runs start from a warm page cache.

Ingest must decode every image, so it cannot approach 1.0. Per file and core, measured here:
read+hash ~0.05 ms, header parse ~0.13 ms, 1/8-scale full-stream decode ~0.21 ms, so ~0.13 is
the ceiling before any bookkeeping; the target is ratio >= 0.05 (validation costs at most 20x
the bare hashing). ``--repeat N`` builds a temporary lake of N symlinked copies of every file to
measure at scale (all copies are then reported as duplicates, after full validation).

    .venv/bin/python bench/ingest_lake.py [--lake PATH] [--repeat N] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cloud.data.config import IngestConfig  # noqa: E402
from cloud.data.ingest import ingest  # noqa: E402
from cloud.registry.store import Registry  # noqa: E402
from shared.paths import sample_lake  # noqa: E402

TARGET = 0.05


def _read_hash(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def files_of(lake: Path) -> list[str]:
    return sorted(str(p) for p in lake.rglob("*") if p.is_file())


def raw_rate(paths: list[str], workers: int) -> float:
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap(_read_hash, paths, chunksize=32):
            pass
    return len(paths) / (time.perf_counter() - t0)


def ingest_rate(lake: Path, n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(Path(tmp) / "registry.db")
        t0 = time.perf_counter()
        ingest(lake, reg, Path(tmp) / "datasets", IngestConfig(workers=workers), show_progress=False)
        dt = time.perf_counter() - t0
        reg.close()
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", type=Path, default=sample_lake())
    ap.add_argument("--repeat", type=int, default=1, help="symlinked copies of every file")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lake = args.lake if args.repeat <= 1 else replicate(args.lake, Path(tmp) / "lake", args.repeat)
        return run(lake, args)


def replicate(src: Path, dest: Path, copies: int) -> Path:
    for f in files_of(src):
        rel = Path(f).relative_to(src)
        for k in range(copies):
            target = dest / rel.parent / f"{k}-{rel.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, target)
    return dest


def run(lake: Path, args: argparse.Namespace) -> int:
    paths = files_of(lake)
    if not paths:
        print(f"no files under {lake}", file=sys.stderr)
        return 2
    for p in paths:  # warm the page cache so both runs read from memory
        Path(p).read_bytes()
    raw = raw_rate(paths, args.workers)
    ing = ingest_rate(lake, len(paths), args.workers)
    r: dict[str, Any] = {
        "files": len(paths),
        "workers": args.workers,
        "raw_read_hash_files_per_s": round(raw, 1),
        "ingest_files_per_s": round(ing, 1),
        "ratio": round(ing / raw, 3),
        "target": TARGET,
        "ok": ing / raw >= TARGET,
    }
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['files']} files, {r['workers']} workers ({lake})")
        print(f"raw read + SHA-256:  {raw:>8.0f} files/s")
        print(f"parkwatch ingest:    {ing:>8.0f} files/s")
        print(f"ratio {r['ratio']:.2f} (target >= {TARGET}) {'OK' if r['ok'] else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
