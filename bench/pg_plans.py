"""Issue 13: the PostgreSQL plans of the queries the dashboard and the analysis run.

Fills a private PostgreSQL 15 (cloud/fleet/backends/pgserver.py) with N devices, H hours of
telemetry each (one sample every STEP s) and P predictions each, by bench/seed_pages.py (or,
``--seed writer``, every message through the real ingest writer), runs ANALYZE, then prints
``EXPLAIN (ANALYZE, BUFFERS)`` for each query.

Usage: python bench/pg_plans.py [--devices 1000] [--hours 2] [--step 60] [--predictions 200]
                                [--seed bulk|writer]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--predictions", type=int, default=200)
    ap.add_argument("--step", type=float, default=60.0)
    ap.add_argument("--seed", choices=("bulk", "writer"), default="bulk")
    args = ap.parse_args()

    import psycopg

    import tests.fleetutil as fu
    from bench.seed_pages import seed_bulk
    from cloud.dashboard.views.devices import _CAMERAS_SQL_PG, _SERIES_SQL_PG
    from cloud.fleet.backends.pg import translate
    from cloud.fleet.backends.pgserver import EmbeddedPostgres
    from cloud.fleet.store import FleetStore
    from tests.dashutil import make_cfg, seed_fleet

    pg = EmbeddedPostgres()
    pg.start()
    try:
        url = pg.create_database("plans")
        fu.PG_URL = url
        cfg = make_cfg(Path(tempfile.mkdtemp(prefix="parkwatch-plans-")))
        t = time.perf_counter()
        if args.seed == "bulk":
            seed_bulk(cfg, args.devices, args.hours, args.step, predictions=args.predictions)
        else:
            seed_fleet(cfg, args.devices, hours=args.hours, step_s=args.step, predictions=args.predictions)
        print(f"seeded {args.devices} devices in {time.perf_counter() - t:.0f} s", flush=True)
        now = time.time()
        with FleetStore(cfg.fleet_store) as fs:
            page = [d.device for d in fs.devices_brief()[:100]]
        queries = [
            (
                "fleet page: every device, the columns counted, filtered and sorted on",
                "SELECT device, site, status, status_reason, last_seen, health, update_state, model_version "
                "FROM devices ORDER BY site, device",
                (),
            ),
            (
                "fleet page: full rows of the shown page",
                "SELECT * FROM devices WHERE device = ANY(?)",
                (page,),
            ),
            (
                "fleet page: newest sample of the shown page (one query)",
                "SELECT t.* FROM unnest(?::text[]) AS d(device) CROSS JOIN LATERAL (SELECT * FROM "
                "telemetry x WHERE x.device = d.device ORDER BY x.ts DESC LIMIT 1) AS t",
                (page,),
            ),
            (
                "fleet page: last hour sparklines of the shown page (one query)",
                "SELECT device, ts, cpu_percent, temp_max FROM (SELECT device, ts, cpu_percent, temp_max, "
                "row_number() OVER (PARTITION BY device ORDER BY ts DESC) AS k FROM telemetry "
                "WHERE device = ANY(?) AND ts >= ?) AS w WHERE k <= ? ORDER BY device, ts",
                (page, now - 3600, 120),
            ),
            (
                "fleet page sorted by a live figure: newest sample of every device (one query)",
                "SELECT d.device, t.cpu_percent, t.temp_max, t.outbox_backlog FROM devices d CROSS JOIN "
                "LATERAL (SELECT cpu_percent, temp_max, outbox_backlog FROM telemetry x "
                "WHERE x.device = d.device ORDER BY x.ts DESC LIMIT 1) AS t",
                (),
            ),
            (
                "fleet page: devices (SELECT *, before issue 13)",
                "SELECT * FROM devices ORDER BY site, device",
                (),
            ),
            (
                "device page: newest sample",
                "SELECT * FROM telemetry WHERE device=? ORDER BY ts DESC LIMIT 1",
                ("box0007",),
            ),
            (
                "fleet page before: last hour trend, one device at a time",
                "SELECT device, ts, cpu_percent, temp_max FROM telemetry WHERE device=? AND ts>=? AND ts<=? "
                "ORDER BY ts DESC LIMIT ?",
                ("box0007", now - 3600, 1e18, 120),
            ),
            ("device page: 24 h series", _SERIES_SQL_PG, ("box0007", now - 86400, 120.0)),
            ("device page: 24 h cameras", _CAMERAS_SQL_PG, ("box0007", now - 86400, 120.0)),
            (
                "device page: predictions newest first",
                "SELECT * FROM predictions WHERE ts>=? AND ts<=? AND device=? ORDER BY ts DESC LIMIT ?",
                (0.0, 1e18, "box0007", 100),
            ),
            ("lineage: one prediction", "SELECT * FROM predictions WHERE device=? AND seq=?", ("box0007", 5)),
            (
                "analysis: drift window",
                "SELECT model_version, site, device, label, confidence, abstain, flags FROM predictions "
                "WHERE ts>=? AND ts<=?",
                (now - 600, now),
            ),
            (
                "labelling: unlabelled snapshots",
                "SELECT p.device, p.seq FROM predictions p LEFT JOIN feedback f ON f.device = p.device "
                "AND f.seq = p.seq WHERE p.snapshot IS NOT NULL AND f.device IS NULL AND p.ts >= ? "
                "AND p.site IN (?) ORDER BY p.ts DESC LIMIT ?",
                (now - 86400, "park1", 50),
            ),
        ]
        with psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor) as c:
            c.execute("ANALYZE")
            for title, sql, params in queries:
                print(f"\n== {title}")
                q = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + translate(sql, bool(params))
                for (line,) in c.execute(q, params or None).fetchall():
                    print(line)
    finally:
        pg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
