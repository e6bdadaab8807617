"""Issue 7 benchmark: dashboard page server time against the store queries behind it.

Builds a fleet store with N simulated devices (default 1,000) and a day of telemetry each
(one sample every STEP seconds, default 10 s as a box sends it → 8.64 M rows), by
bench/seed_pages.py (the telemetry history loaded in bulk by the writer's own row code, every
other row through the real ingest writer; ``--seed writer`` sends every message through the
writer, as before: about 1.5 h for 10,000 devices x 24 h at 60 s on 2 cores). Then times,
in-process (the real FastAPI app through its ASGI interface, no network):

* the fleet page (first page of 100 devices, the default sort) and
* the device page with a 24 h window (five charts over ~1,440 samples, bucketed to 720 points),

each next to the store queries those pages make, run alone. Prints median and p95 milliseconds
over R runs, the median against the 300 ms goal (< 1.0 is within it) and the page's median
over the queries' (the share that is rendering and Python).

Usage: python bench/dashboard.py [--devices N] [--step S] [--hours H] [--predictions P] [--runs R]
                                 [--keep DIR] [--seed bulk|writer] [--store sqlite|postgresql]
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


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, p95) milliseconds of ``runs`` calls after one warm-up (templates compiled,
    database pages read)."""
    fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument(
        "--step", type=float, default=10.0, help="seconds between telemetry samples (edge default: 10)"
    )
    ap.add_argument("--predictions", type=int, default=200, help="predictions per device over the window")
    ap.add_argument("--seed", choices=("bulk", "writer"), default="bulk")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--runs", type=int, default=20)
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

    from bench.seed_pages import check_disk, seed_bulk
    from cloud.analysis.config import AnalysisConfig  # noqa: F401  (import cost outside timings)
    from cloud.dashboard.views.devices import WINDOWS, telemetry_series
    from cloud.dashboard.views.fleet import TREND_WINDOW_S
    from cloud.fleet.store import FleetStore
    from tests.dashutil import client_for, make_cfg, seed_fleet, seed_users, sign_in

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="parkwatch-bench-dash-"))
    size_of = {"devices": args.devices, "hours": args.hours, "step_s": args.step}
    cfg = make_cfg(tmp)
    try:
        if args.store == "postgresql" or not cfg.paths.fleet_db.exists():
            # PostgreSQL: bench/ingest_fleet.py's private server keeps its data under TMPDIR.
            check_disk(Path(tempfile.gettempdir()) if args.store == "postgresql" else tmp, **size_of)
            t = time.perf_counter()
            if args.seed == "bulk":
                names = seed_bulk(
                    cfg, args.devices, args.hours, args.step, predictions=args.predictions, progress=True
                )
                how = "bulk-loaded (bench/seed_pages.py)"
            else:
                names = seed_fleet(
                    cfg,
                    devices=args.devices,
                    hours=args.hours,
                    step_s=args.step,
                    predictions=args.predictions,
                )
                how = "written through the ingest writer"
            rows = len(names) * (int(args.hours * 3600 / args.step) + 1)
            print(
                f"store: {len(names)} devices, {rows:,} telemetry rows, {len(names) * args.predictions:,} "
                f"predictions {how} in {time.perf_counter() - t:.0f} s ({args.store})",
                flush=True,
            )
            if args.store == "postgresql":
                store0 = FleetStore(cfg.fleet_store)
                store0.execute("ANALYZE")  # as autovacuum would soon after a load this size
                store0.close()
        seed_users(cfg)
        client = client_for(cfg)
        sign_in(client, "viewer")
        store = FleetStore(cfg.fleet_store)
        size = cfg.dashboard.page_size
        device = "box0000"

        def fleet_page() -> None:
            r = client.get("/")
            assert r.status_code == 200 and r.text.count('data-device="') == min(size, args.devices)

        def page_queries(names: list[str]) -> None:
            now = time.time()
            store.devices_named(names)
            store.latest_telemetry_of(names)
            store.telemetry_of(names, since=now - TREND_WINDOW_S, limit=120)
            store.outcomes_by_device(names, since=now - TREND_WINDOW_S)
            store.outcomes(since=now - TREND_WINDOW_S)

        def fleet_queries() -> None:
            page_queries([d.device for d in store.devices_brief()[:size]])

        def fleet_page_by_cpu() -> None:
            r = client.get("/", params={"sort": "cpu", "desc": "true"})
            assert r.status_code == 200

        def fleet_queries_all() -> None:
            store.devices_brief()
            figures = store.latest_figures()
            top = sorted(figures, key=lambda d: figures[d].cpu_percent or 0.0, reverse=True)
            page_queries(top[:size])

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
            (f"fleet page ({size} of {args.devices})", fleet_page, fleet_queries),
            (f"fleet sorted by CPU (all {args.devices})", fleet_page_by_cpu, fleet_queries_all),
            ("device page (24 h window)", device_page, device_queries),
        ):
            (p_ms, p95), (q_ms, _) = timed(page, args.runs), timed(queries, args.runs)
            results.append((name, p_ms, p95, q_ms))
        print(f"runs: {args.runs} per page, after one warm-up; {args.store}")
        print(
            f"{'page':<36}{'median ms':>10}{'p95 ms':>9}{'store ms':>10}{'page/store':>12}{'page/goal':>11}"
        )
        for name, p_ms, p95, q_ms in results:
            print(
                f"{name:<36}{p_ms:>10.1f}{p95:>9.1f}{q_ms:>10.1f}{p_ms / q_ms:>12.2f}{p_ms / GOAL_MS:>11.2f}"
            )
        ok = all(p <= GOAL_MS for _, p, _, _ in results)
        print(f"goal: each page under {GOAL_MS:.0f} ms on this machine -> {'met' if ok else 'NOT met'}")
        store.close()
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
