"""Issue 7 benchmark: dashboard page server time against the store queries behind it.

Builds a fleet store with N simulated devices (default 1,000) and a day of telemetry each
(one sample every STEP seconds, default 60 → 1.44 M rows), written through the real ingest
writer. Then times, in-process (the real FastAPI app through its ASGI interface, no network):

* the fleet page (first page of 100 devices, the default sort) and
* the device page with a 24 h window (five charts over ~1,440 samples, bucketed to 720 points),

each next to the store queries those pages make, run alone. Prints median milliseconds, the
ratio against the 300 ms goal (< 1.0 is within it) and the share of page time that is rendering.

Usage: python bench/dashboard.py [--devices N] [--step S] [--hours H] [--runs R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_MS = 300.0


def timed(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm caches (templates compiled, SQLite pages read)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--step", type=float, default=60.0, help="seconds between telemetry samples")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--keep", type=Path, help="build the store here and keep it (re-used if present)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--database-url", help="with --store postgresql: an empty database to fill")
    args = ap.parse_args()
    if args.store == "postgresql":
        if not args.database_url:
            ap.error(
                "--store postgresql needs --database-url (bench/ingest_fleet.py --pages-devices starts one)"
            )
        import tests.fleetutil

        tests.fleetutil.PG_URL = args.database_url  # make_cfg below points fleet.database_url at it

    from cloud.analysis.config import AnalysisConfig  # noqa: F401  (import cost outside timings)
    from cloud.dashboard.views.devices import WINDOWS, telemetry_series
    from cloud.dashboard.views.fleet import TREND_WINDOW_S
    from cloud.fleet.store import FleetStore
    from tests.dashutil import client_for, make_cfg, seed_fleet, seed_users, sign_in

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="parkwatch-bench-dash-"))
    cfg = make_cfg(tmp)
    try:
        if args.store == "postgresql" or not cfg.fleet_db.exists():
            t = time.perf_counter()
            names = seed_fleet(cfg, devices=args.devices, hours=args.hours, step_s=args.step)
            rows = len(names) * (int(args.hours * 3600 / args.step) + 1)
            print(
                f"store: {len(names)} devices, {rows:,} telemetry rows written through the ingest writer "
                f"in {time.perf_counter() - t:.0f} s ({args.store})",
                flush=True,
            )
        seed_users(cfg)
        client = client_for(cfg)
        sign_in(client, "viewer")
        store = FleetStore(cfg.fleet_store)
        size = cfg.dashboard.page_size
        device = "box0000"

        def fleet_page() -> None:
            r = client.get("/")
            assert r.status_code == 200 and r.text.count('data-device="') == min(size, args.devices)

        def fleet_queries() -> None:
            now = time.time()
            devs = store.devices()
            for d in devs[:size]:
                store.latest_telemetry(d.device)
                store.telemetry(d.device, since=now - TREND_WINDOW_S, limit=120)

        def fleet_page_by_cpu() -> None:
            r = client.get("/", params={"sort": "cpu", "desc": "true"})
            assert r.status_code == 200

        def fleet_queries_all() -> None:
            now = time.time()
            devs = store.devices()
            for d in devs:
                store.latest_telemetry(d.device)
            for d in devs[:size]:
                store.telemetry(d.device, since=now - TREND_WINDOW_S, limit=120)

        def device_page() -> None:
            r = client.get(f"/devices/{device}", params={"window": "24h"})
            assert r.status_code == 200 and 'aria-label="CPU"' in r.text

        def device_queries() -> None:
            now = time.time()
            store.device(device)
            telemetry_series(store, device, now - WINDOWS["24h"], WINDOWS["24h"])
            store.latest_telemetry(device)
            store.model_states(device, limit=50)
            store.status_events(device, limit=20)
            store.gaps(device)

        results = []
        for name, page, queries in (
            (f"fleet page (100 of {args.devices})", fleet_page, fleet_queries),
            (f"fleet sorted by CPU (all {args.devices})", fleet_page_by_cpu, fleet_queries_all),
            ("device page (24 h window)", device_page, device_queries),
        ):
            p_ms, q_ms = timed(page, args.runs), timed(queries, args.runs)
            results.append((name, p_ms, q_ms))
        print(f"{'page':<36}{'server ms':>10}{'store ms':>10}{'page/store':>12}{'page/goal':>11}")
        for name, p_ms, q_ms in results:
            print(f"{name:<36}{p_ms:>10.1f}{q_ms:>10.1f}{p_ms / q_ms:>12.2f}{p_ms / GOAL_MS:>11.2f}")
        ok = all(p <= GOAL_MS for _, p, _ in results)
        print(f"goal: each page under {GOAL_MS:.0f} ms on this machine -> {'met' if ok else 'NOT met'}")
        store.close()
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
