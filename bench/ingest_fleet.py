"""Issue 6 benchmark: fleet ingest throughput against the broker's own delivery rate.

N simulated devices publish batched predictions (QoS 1) over a real Mosquitto started with
the shipped config. Phase 1 measures how fast the broker delivers that traffic to a subscriber
that discards it; phase 2 how fast ``FleetIngest`` stores it durably: committed with
synchronous=FULL to the worker's inbox and acknowledged, the point after which the broker forgets
it. Prints both rates and their ratio (target >= 0.8), and also how fast the same predictions
became rows in the fleet tables (the materializer's rate, which is what analysis and the dashboard
see; the difference waits in the inbox, already safe).

    .venv/bin/python bench/ingest_fleet.py [--devices 10] [--batches 1000] [--batch-size 50] [--repeat 3]
                                           [--json]

Issue 13: ``--store sqlite postgresql`` runs the ingest phase once per fleet store (PostgreSQL:
a private PostgreSQL 15 started for the run, cloud/fleet/backends/pgserver.py) and ``--workers 1 2``
with that many ingest workers (each its own receiver, inbox and materializer process, joined in
one shared subscription; here in one process, in production on separate hosts). ``--pages-devices
10000`` then times the fleet page and one device page over that many devices with 24 h of
telemetry (one sample every ``--pages-step`` s, the edge's 10 s by default) on each store
(bench/dashboard.py, filled by bench/seed_pages.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from cloud.config import CloudConfig  # noqa: E402
from cloud.fleet.ingest_worker import FleetIngest  # noqa: E402
from shared.broker import EmbeddedBroker  # noqa: E402
from shared.protocol import Kind, PredictionBatch, Topics, encode  # noqa: E402
from tests.simdevice import SimDevice  # noqa: E402

TARGET = 0.8
QUERYABLE_TARGET = 0.5  # issue 13: rows queryable in the fleet tables vs. broker delivery


def _publisher(port: int, devices: int, batches: int, batch_size: int, tag: str) -> None:
    """Child-process side: the devices live in their own process, as they would on their own boxes."""
    traffic = []
    for i in range(devices):
        d = SimDevice("127.0.0.1", port, site="bench", device=f"{tag}-{i}", seed=i)
        msgs = [
            encode(PredictionBatch(device=d.device, site=d.site, predictions=d.make_predictions(batch_size)))
            for _ in range(batches)
        ]
        traffic.append((d.connect(status=False), msgs))
    print("ready", flush=True)
    sys.stdin.readline()

    def run(d: SimDevice, msgs: list[bytes]) -> None:
        topic = d.topic(Kind.PREDICTIONS)
        for m in msgs:
            d.publish_raw(topic, m)
        d.flush(timeout=600)

    threads = [threading.Thread(target=run, args=t) for t in traffic]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)
    sys.stdin.readline()


class Publishers:
    def __init__(self, port: int, devices: int, batches: int, batch_size: int, tag: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--publisher",
                str(port),
                str(devices),
                str(batches),
                str(batch_size),
                tag,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("publisher process failed to start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdout.readline()
        self.proc.stdin.write("bye\n")
        self.proc.stdin.flush()
        self.proc.wait(60)


def broker_rate(b: EmbeddedBroker, devices: int, batches: int, batch_size: int) -> float:
    total = devices * batches
    got = 0
    done = threading.Event()
    ready = threading.Event()

    def on_msg(c: Any, u: Any, m: Any) -> None:
        nonlocal got
        got += 1
        if got == total:
            done.set()

    sub = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-discard", protocol=mqtt.MQTTv5
    )
    sub.on_connect = lambda c, u, f, rc, p=None: (c.subscribe(Topics.ALL_PREDICTIONS, qos=1), ready.set())
    sub.on_message = on_msg
    sub.connect("127.0.0.1", b.port)
    sub.loop_start()
    ready.wait(10)
    time.sleep(0.3)
    pubs = Publishers(b.port, devices, batches, batch_size, "sub")
    t0 = time.perf_counter()
    pubs.go()
    done.wait(600)
    dt = time.perf_counter() - t0
    pubs.close()
    sub.disconnect()
    sub.loop_stop()
    if got != total:
        raise SystemExit(f"discarding subscriber got {got} of {total} messages")
    return total * batch_size / dt


def _end_session(b: EmbeddedBroker, client_id: str) -> None:
    """Drop ingest's persistent session, or the broker would keep queueing the next runs for it."""
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    c.connect("127.0.0.1", b.port, clean_start=True)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def _stored(cfg: CloudConfig) -> int:
    """Predictions in the fleet tables, from the per-device totals the writer keeps in the same
    transaction as the rows (a count(*) of the table every poll would load the store)."""
    from cloud.fleet.store import FleetStore

    with FleetStore(cfg.fleet_store) as fs:
        r = fs.query("SELECT coalesce(sum(predictions_total), 0) AS n FROM devices")
    return int(r[0]["n"])


def ingest_rate(
    b: EmbeddedBroker,
    work: Path,
    devices: int,
    batches: int,
    batch_size: int,
    fleet: dict[str, Any],
    workers: int = 1,
) -> tuple[float, float, dict[str, Any]]:
    cfg = CloudConfig.model_validate(
        {
            "data_dir": str(work / "cloud"),
            "mqtt": {"port": b.port},
            "fleet": {"client_id": f"bench-ingest-{work.name}", **fleet},
        }
    )
    ings = [FleetIngest(cfg, client_id=f"{cfg.fleet.client_id}-w{k}") for k in range(workers)]
    for ing in ings:
        ing.start()
    for ing in ings:
        ing.wait_connected(10)
    # Measure the steady state, not the materializer processes' start-up (imports, connecting
    # and migrating the store): wait for their first heartbeat.
    deadline = time.monotonic() + 120
    while (
        any(i.stats()["materializer_heartbeat_age_s"] is None for i in ings) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)
    total = devices * batches * batch_size
    pubs = Publishers(b.port, devices, batches, batch_size, "ing")
    t0 = time.perf_counter()
    t0_wall = time.time()
    pubs.go()
    deadline = time.monotonic() + 600
    t_durable: float | None = None
    # Poll only the receiver's own counter while the burst runs: querying fleet.db from this process
    # would take CPU from the ingest being measured.
    while time.monotonic() < deadline and t_durable is None:
        if sum(i.accepted for i in ings) >= devices * batches:
            t_durable = time.perf_counter() - t0
        time.sleep(0.002)
    n = 0
    while time.monotonic() < deadline:
        n = _stored(cfg)
        if n >= total:
            break
        time.sleep(0.1)
    # The materializers' last commit, not when this loop noticed it.
    last_write = max(i.stats()["last_write_ts"] or 0.0 for i in ings) or time.time()
    dt = max(last_write - t0_wall, t_durable or 0.0)
    stats = ings[0].stats()
    stats["batches"] = sum(i.stats()["batches"] for i in ings)
    stats["accepted_per_worker"] = [i.accepted for i in ings]
    pubs.close()
    for ing in ings:
        ing.stop()
        _end_session(b, ing.client_id)
    if n != total:
        raise SystemExit(f"ingest stored {n} of {total} predictions")
    return total / (t_durable or dt), total / dt, stats


def run(
    devices: int = 10,
    batches: int = 1000,
    batch_size: int = 50,
    batch_max: int | None = None,
    repeat: int = 3,
    database_url: Callable[[str], str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Each phase ``repeat`` times; the best of each is compared (the run least disturbed by the
    rest of the machine, the same rule for both sides)."""
    fleet: dict[str, Any] = {"batch_max": batch_max} if batch_max else {}
    subs: list[float] = []
    ings: list[float] = []
    rows: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pw-bench-ingest-") as tmp:
        work = Path(tmp)
        with EmbeddedBroker(work / "broker") as b:
            for i in range(repeat):
                subs.append(broker_rate(b, devices, batches, batch_size))
                run_fleet = dict(fleet)
                if database_url is not None:
                    run_fleet["database_url"] = database_url(f"run{i}")
                ing, row, stats = ingest_rate(
                    b, work / f"run{i}", devices, batches, batch_size, run_fleet, workers
                )
                ings.append(ing)
                rows.append(row)
    sub, ing, row = max(subs), max(ings), max(rows)
    return {
        "bench": "ingest_fleet",
        "devices": devices,
        "batches_per_device": batches,
        "batch_size": batch_size,
        "predictions": devices * batches * batch_size,
        "repeat": repeat,
        "broker_delivery_pred_per_s": round(sub, 1),
        "ingest_stored_pred_per_s": round(ing, 1),
        "ingest_queryable_pred_per_s": round(row, 1),
        "queryable_ratio": round(row / sub, 3),
        "runs": {
            "broker_delivery": [round(x) for x in subs],
            "ingest_stored": [round(x) for x in ings],
            "ingest_queryable": [round(x) for x in rows],
        },
        "ratio": round(ing / sub, 3),
        # Each ingest run against the subscriber run just before it, on the same broker.
        "pair_ratios": [round(i / s, 3) for s, i in zip(subs, ings, strict=True)],
        "target": TARGET,
        "ok": ing / sub >= TARGET,
        "ingest_batches": stats["batches"],
        "workers": workers,
        "accepted_per_worker": stats["accepted_per_worker"],
        "queryable_target": QUERYABLE_TARGET,
        "queryable_ok": row / sub >= QUERYABLE_TARGET,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--publisher"]:
        port, devices, batches, batch_size = (int(x) for x in args[1:5])
        _publisher(port, devices, batches, batch_size, args[5])
        return {}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    # 1,000 x 10 x 50 = 500,000 predictions, a burst of about 1.5 s: long enough that the
    # start-up of publishers and subscriber does not decide the rate (0.5 s bursts scattered
    # the discarding subscriber's own rate from 270,000 to 465,000/s on this 2-core machine).
    ap.add_argument("--batches", type=int, default=1000, help="batches per device")
    ap.add_argument("--batch-size", type=int, default=50, help="predictions per batch")
    ap.add_argument(
        "--batch-max", type=int, default=None, help="fleet.batch_max for ingest (default: config)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each phase; the best of each counts")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--store", nargs="+", choices=("sqlite", "postgresql"), default=None)
    ap.add_argument("--workers", nargs="+", type=int, default=None, help="ingest workers, e.g. 1 2")
    ap.add_argument(
        "--pages-devices", type=int, default=0, help="then time the dashboard pages over this many devices"
    )
    ap.add_argument("--pages-hours", type=float, default=24.0)
    ap.add_argument(
        "--pages-step", type=float, default=10.0, help="seconds between telemetry samples (edge default: 10)"
    )
    ap.add_argument("--pages-predictions", type=int, default=200, help="predictions per device")
    ap.add_argument("--pages-runs", type=int, default=20, help="timed runs of each page (median, p95)")
    a = ap.parse_args(args)
    if a.store is None and a.workers is None and not a.pages_devices:
        r = run(a.devices, a.batches, a.batch_size, a.batch_max, a.repeat)
        _print(r, a.json)
        return r
    return _matrix(a)


def _matrix(a: argparse.Namespace) -> dict[str, Any]:
    """Issue 13: every store x worker count, then the pages; one JSON document at the end."""
    from cloud.fleet.backends.pgserver import EmbeddedPostgres

    stores = a.store or ["sqlite"]
    pg = EmbeddedPostgres() if "postgresql" in stores else None
    results: list[dict[str, Any]] = []
    pages: dict[str, str] = {}
    try:
        if pg is not None:
            pg.start()
        for store in stores:
            for w in a.workers or [1]:
                url: Callable[[str], str] | None = None
                if store == "postgresql":
                    assert pg is not None
                    url = functools.partial(_new_db, pg, f"w{w}")
                r = run(a.devices, a.batches, a.batch_size, a.batch_max, a.repeat, url, w)
                r["store"] = store
                results.append(r)
                if not a.json:
                    print(f"== store {store}, {w} worker(s)")
                    _print(r, False)
            if a.pages_devices:
                cmd = [
                    sys.executable,
                    str(ROOT / "bench" / "dashboard.py"),
                    "--devices",
                    str(a.pages_devices),
                ]
                cmd += ["--hours", str(a.pages_hours), "--step", str(a.pages_step), "--store", store]
                cmd += ["--predictions", str(a.pages_predictions), "--runs", str(a.pages_runs)]
                if store == "postgresql":
                    assert pg is not None
                    cmd += ["--database-url", pg.create_database("bench_pages")]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                pages[store] = out.stdout + (out.stderr[-2000:] if out.returncode else "")
                if not a.json:
                    print(f"== dashboard pages, store {store}, {a.pages_devices} devices")
                    print(pages[store])
    finally:
        if pg is not None:
            pg.cleanup()
    doc: dict[str, Any] = {"bench": "ingest_fleet", "runs": results, "pages": pages}
    if a.json:
        print(json.dumps(doc, indent=2))
    doc["ok"] = all(r["ok"] for r in results)
    return doc


def _new_db(pg: Any, tag: str, run: str) -> str:
    return str(pg.create_database(f"bench_{tag}_{run}"))


def _print(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(r, indent=2))
    else:
        print(
            f"{r['predictions']} predictions from {r['devices']} devices in batches of {r['batch_size']}, "
            f"best of {r['repeat']} runs each (all runs: {r['runs']})"
        )
        print(f"broker -> discarding subscriber: {r['broker_delivery_pred_per_s']:>10.0f} predictions/s")
        print(f"broker -> FleetIngest (durable): {r['ingest_stored_pred_per_s']:>10.0f} predictions/s")
        print(
            f"  ... and in the fleet tables:   {r['ingest_queryable_pred_per_s']:>10.0f} predictions/s "
            f"(ratio {r['queryable_ratio']:.2f}; the rest waits in the inbox, already acknowledged)"
        )
        print(f"run by run (ingest over the subscriber run before it): {r['pair_ratios']}")
        print(f"ratio {r['ratio']:.2f} (target >= {TARGET}) {'OK' if r['ok'] else 'BELOW TARGET'}")
        print(
            f"queryable ratio {r['queryable_ratio']:.2f} (issue 13 target >= {QUERYABLE_TARGET}) "
            f"{'OK' if r['queryable_ok'] else 'BELOW TARGET'}; per worker accepted {r['accepted_per_worker']}"
        )


if __name__ == "__main__":
    sys.exit(0 if main().get("ok", True) else 1)
