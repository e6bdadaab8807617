"""Both ingest benchmarks the issues ask for under this name.

- ``lake``:  data-lake ingest files/s against the raw read-and-hash rate of the same files
  (bench/ingest_lake.py, build pipeline).
- ``fleet``: predictions/s durably stored by fleet ingest against the broker's delivery rate to
  a discarding subscriber (bench/ingest_fleet.py, fleet monitoring).

Usage: python bench/ingest.py [lake|fleet ...]   (both by default)
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {"lake": HERE / "ingest_lake.py", "fleet": HERE / "ingest_fleet.py"}


def main(argv: list[str]) -> int:
    chosen = argv or list(PARTS)
    for name in chosen:
        if name not in PARTS:
            print(f"unknown part {name!r}; choose from {', '.join(PARTS)}", file=sys.stderr)
            return 2
    worst = 0
    for name in chosen:
        print(f"-- ingest {name}", flush=True)
        sys.argv = [str(PARTS[name])]
        try:
            runpy.run_path(str(PARTS[name]), run_name="__main__")
        except SystemExit as e:  # each part ends with sys.exit(status); run the others too
            worst = max(worst, e.code if isinstance(e.code, int) else 1)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
