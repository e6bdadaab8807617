"""Issue 11's five perception figures, measured with ``parkwatch edge classify`` on held-out photos.

Held-out = the test side of the content-hash split (the same rule and fraction as
``parkwatch cloud ingest``, so a model trained on that lake never saw these files):

1. close-up pets right            test cat/dog photos                      target >= 0.98
2. no-pet photos rejected         test none photos called ``none``         target >= 0.95
3. pets in 1280x720 scenes right  test pets at --height of the frame height
                                  at random places on test none photos     target >= 0.95
4. the same in greyscale right                                             target >= 0.90
5. empty scenes rejected          test none photos alone, 1280x720         target >= 0.95

Scenes are written as JPEG files and every file goes through the ``parkwatch edge classify
--json`` command, exactly as a technician would run it. Exit status 1 when a figure misses its
target. Run it on an idle machine for figures of record:

    python bench/perception.py --model /var/lib/parkwatch-cloud/models/VERSION
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud.data.split import side
from cloud.evaluation.scenes import build_specs, render
from shared.paths import sample_lake

TARGETS = {
    "close-up pets right": 0.98,
    "no-pet photos rejected": 0.95,
    "pets in 1280x720 scenes right": 0.95,
    "the same in greyscale right": 0.90,
    "empty scenes rejected": 0.95,
}
EXTS = {".jpg", ".jpeg", ".png"}


def held_out(folder: Path, label: str, test_fraction: float) -> list[tuple[Path, str]]:
    out = []
    for p in sorted(folder.iterdir()):
        if (
            p.suffix.lower() in EXTS
            and p.is_file()
            and side(hashlib.sha256(p.read_bytes()).hexdigest(), test_fraction) == "test"
        ):
            out.append((p, label))
    return out


def classify(model: Path, files: list[Path]) -> list[dict]:
    exe = Path(sys.executable).parent / "parkwatch"
    cmd = [str(exe), "edge", "classify", "--model", str(model), "--json", *map(str, files)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if res.returncode not in (0, 1) or not res.stdout.strip():
        raise SystemExit(f"parkwatch edge classify failed ({res.returncode}): {res.stderr[-2000:]}")
    return list(json.loads(res.stdout))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model package folder")
    ap.add_argument("--pets", type=Path, default=sample_lake(), help="folder with cat/ and dog/")
    ap.add_argument("--nopet", type=Path, default=sample_lake().parent / "nopet-dev" / "none")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="the ingest's test_fraction")
    ap.add_argument("--scenes", type=int, default=200, help="pet scenes (as many greyscale copies)")
    ap.add_argument("--empty", type=int, default=200, help="empty scenes")
    ap.add_argument("--height", type=float, default=0.3, help="pet height as a fraction of the frame's")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--limit", type=int, default=0, help="smoke test: at most N photos per set")
    args = ap.parse_args()

    pets = held_out(args.pets / "cat", "cat", args.test_fraction) + held_out(
        args.pets / "dog", "dog", args.test_fraction
    )
    nopet = [p for p, _ in held_out(args.nopet, "none", args.test_fraction)]
    if args.limit:
        pets, nopet = pets[:: max(1, len(pets) // args.limit)][: args.limit], nopet[: args.limit]
    print(f"held out: {len(pets)} pet photos, {len(nopet)} no-pet photos (test side of the split)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pw-perception-") as tmp:
        specs = build_specs(pets, nopet, args.scenes, args.empty, args.seed, (args.height, args.height))
        scene_files: list[tuple[Path, str, str]] = []
        for k, s in enumerate(specs):
            f = Path(tmp) / f"{k:05d}-{s.kind}-{s.label}.jpg"
            cv2.imwrite(str(f), render(s), [cv2.IMWRITE_JPEG_QUALITY, 92])
            scene_files.append((f, s.kind, s.label))
        files = [p for p, _ in pets] + nopet + [f for f, _, _ in scene_files]
        rows = classify(args.model, files)
    by_file = {r["file"]: r for r in rows}
    errors = [r for r in rows if r.get("error")]

    def rate(pairs: list[tuple[Path, str]]) -> float:
        return sum(by_file[str(f)]["label"] == want for f, want in pairs) / max(1, len(pairs))

    figures = {
        "close-up pets right": rate(pets),
        "no-pet photos rejected": rate([(p, "none") for p in nopet]),
        "pets in 1280x720 scenes right": rate([(f, lab) for f, kind, lab in scene_files if kind == "pet"]),
        "the same in greyscale right": rate([(f, lab) for f, kind, lab in scene_files if kind == "grey"]),
        "empty scenes rejected": rate([(f, lab) for f, kind, lab in scene_files if kind == "empty"]),
    }
    elapsed = time.monotonic() - t0
    ok = True
    print(
        f"{len(files)} files through 'parkwatch edge classify' in {elapsed:.0f} s ({len(errors)} unreadable)"
    )
    for name, value in figures.items():
        hit = value >= TARGETS[name]
        ok &= hit
        print(f"  {name:32s} {value:.3f}   target >= {TARGETS[name]:.2f}   {'ok' if hit else 'BELOW TARGET'}")
    abstained = sum(r["label"] == "abstain" for r in rows) / max(1, len(rows))
    print(f"  (abstained overall: {abstained:.3f}; scenes at {args.height:.0%} of the frame height)")
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
