"""The materializer as its own process (``parkwatch cloud materialize``, as systemd runs it) and its
counters in the fleet store, on both fleet backends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from cloud.cli import cloud
from cloud.config import to_toml
from cloud.fleet.backends import open_writer
from cloud.fleet.inbox import Inbox, inbox_path, rejection_row
from cloud.fleet.materialize import Materializer
from cloud.fleet.materializer_stats import stats_in
from cloud.fleet.receiver import Receiver
from cloud.fleet.store import FleetStore
from cloud.fleet.workers import Beat, workers_in, write_beat
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, PredictionBatch, encode
from tests.fleetutil import cloud_cfg, wait_for
from tests.release_support import write_cloud_toml
from tests.simdevice import SimDevice

ROOT = Path(__file__).resolve().parent.parent


def _materialize(toml: Path, worker: str) -> subprocess.Popen[bytes]:
    """``parkwatch cloud materialize`` as the service manager starts it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "cloud",
            "materialize",
            "--worker",
            worker,
            "--config",
            str(toml),
        ],
        cwd=ROOT,
        env=env,
    )


def _materialized(store: FleetStore, worker: str) -> int:
    m = stats_in(store).get(worker)
    return m.materialized if m else 0


def test_a_sigkilled_materializer_restarted_loses_nothing_stores_nothing_twice_and_counts_exactly(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    # Small batches, so the kill lands among many transactions, not after the last one.
    cfg = cloud_cfg(tmp_path, broker, fleet={"batch_max": 10})
    worker = str(cfg.fleet.client_id)
    toml = tmp_path / "cloud.toml"
    toml.write_text(to_toml(cfg))  # the whole config, batch_max included
    rx = Receiver(cfg)
    rx.start()
    assert rx.wait_connected(10)
    dev = SimDevice("127.0.0.1", broker.port, device="box-k").connect()
    store = FleetStore(cfg.fleet_store)
    proc = _materialize(toml, worker)
    try:
        # A backlog in the inbox first (acknowledged, so the broker has let go of it).
        dev.predict(20_000, batch_size=10)
        dev.flush()
        wait_for(lambda: rx.accepted >= 2_001, timeout=60, what="2,000 batches and the status in the inbox")
        wait_for(lambda: _materialized(store, worker) > 0, timeout=60, what="materializing")
        proc.kill()  # SIGKILL, perhaps inside a transaction: as hard as a crash gets
        proc.wait(30)
        killed_at = _materialized(store, worker)
        assert killed_at < 2_001, "the backlog was applied before the kill; make it longer"
        assert rx.inbox_backlog() > 0
        dev.predict(5_000, batch_size=10)  # keeps coming while the materializer is down
        dev.flush()
        wait_for(lambda: rx.accepted >= 2_501, timeout=60, what="the rest in the inbox")
        proc = _materialize(toml, worker)  # restarted, as systemd's Restart= does
        wait_for(lambda: store.prediction_count() == 25_000, timeout=120, what="all 25,000 stored")
        wait_for(lambda: rx.inbox_backlog() == 0, what="inbox trimmed")
        rows = store.query("SELECT count(*) AS n, count(DISTINCT seq) AS d FROM predictions")
        assert rows[0]["n"] == rows[0]["d"] == 25_000
        assert store.gaps("box-k") == []
        row = store.device("box-k")
        assert row is not None and row.max_seq == 25_000
        # The counters come from the fleet store, written with each batch: exact across the kill.
        m = stats_in(store)[worker]
        assert m.materialized == rx.accepted == 2_501
        assert m.stored_predictions == 25_000 and m.duplicates == 0 and m.dead_letters == 0
        assert m.rejected == 0 and m.batches >= 2_501 // 10
        assert m.last_batch_ts is not None and m.lag_s is not None and m.lag_s >= 0
        counters = store.counters()
        assert counters["stored.predictions"] == 25_000
        assert counters.get("duplicates.predictions", 0) == 0
    finally:
        dev.disconnect()
        rx.stop()
        proc.terminate()
        proc.wait(90)
        store.close()


def test_cloud_inbox_health_and_the_worker_view_read_the_counters_from_the_fleet_store(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """Written by one materializer, then read by other processes' commands after it closed: the
    figures can only come from the fleet store."""
    cfg = cloud_cfg(tmp_path, broker)
    dev = SimDevice("127.0.0.1", broker.port, device="box-c")  # payloads only, never connects
    topic = dev.topic(Kind.PREDICTIONS)
    batch = encode(PredictionBatch(device="box-c", site=dev.site, predictions=dev.make_predictions(5)))
    now = time.time()
    inbox = Inbox(inbox_path(cfg.paths, "w-c"))
    inbox.append(
        [
            (topic, batch, now - 3, False),
            (topic, batch, now - 2, False),  # delivered twice: stored once, counted as duplicates
            (topic, b"\xff not json", now - 1, False),  # a dead letter
            rejection_row("too_large", "payload of 9 MB", now),  # refused by the receiver
        ]
    )
    inbox.close()
    m = Materializer(cfg, "w-c")
    assert m.drain() == 4
    m.close()
    w = open_writer(cfg.fleet_store)
    write_beat(w.conn, Beat(worker="w-c", started_ts=now, backlog=0))
    if not cfg.fleet.database_url:
        w.conn.commit()
    w.db.close()
    want = {
        "worker": "w-c",
        "materialized": 4,
        "stored_predictions": 5,
        "duplicates": 5,
        "dead_letters": 1,
        "rejected": 1,
        "batches": 1,
        "last_batch_rows": 4,
    }

    toml = write_cloud_toml(cfg, tmp_path / "cloud.toml")
    res = CliRunner().invoke(cloud, ["inbox", "--json", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    [got] = out["materializers"]
    assert {k: got[k] for k in want} == want
    assert got["lag_s"] >= 3.0  # the oldest message of the batch waited that long after its PUBACK
    [fw] = out["fleet_workers"]
    assert fw["worker"] == "w-c" and fw["materialized"] == 4 and fw["stored_predictions"] == 5
    assert fw["dead_letters"] == 1 and fw["last_batch_age_s"] is not None
    res = CliRunner().invoke(cloud, ["inbox", "--config", str(toml)])
    assert res.exit_code == 0 and "4 messages" in res.output and "dead letters 1" in res.output, res.output

    res = CliRunner().invoke(cloud, ["health", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    assert "w-c" in res.output and "4 messages, 5 predictions, 1 dead letters" in res.output, res.output

    with FleetStore(cfg.fleet_store) as fs:
        [row] = workers_in(fs, cfg.fleet.worker_stale_s)  # the dashboard's worker table
        assert row.materialized == 4 and row.stored_predictions == 5 and row.dead_letters == 1
        counters = fs.counters()
    assert counters["rejected.too_large"] == 1 and counters["rejected.malformed"] == 1


def test_the_materializer_child_of_a_killed_serve_exits_and_frees_the_inbox(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """`cloud serve` SIGKILLed: its materializer child must not live on holding the inbox's lock,
    or the next serve's materializer could never start."""
    from cloud.fleet.inbox import materializer_lock_path, try_flock

    cfg = cloud_cfg(tmp_path, broker)
    worker = str(cfg.fleet.client_id)
    script = (
        "import sys, time\n"
        "from cloud.config import CloudConfig\n"
        "from cloud.fleet.materialize import MaterializerProcess\n"
        "p = MaterializerProcess(CloudConfig.model_validate_json(sys.stdin.read()))\n"
        "p.start()\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    serve = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert serve.stdin is not None and serve.stdout is not None
    serve.stdin.write(cfg.model_dump_json())
    serve.stdin.close()
    child = int(serve.stdout.readline())
    lock = materializer_lock_path(inbox_path(cfg.paths, worker))
    store = FleetStore(cfg.fleet_store)
    try:
        wait_for(lambda: workers_in(store, 60.0), timeout=60, what="the child's first heartbeat")
        assert try_flock(lock) is None  # held by the child
        serve.kill()
        serve.wait(30)
        held = wait_for(lambda: try_flock(lock), timeout=30, what="the orphaned child to let go of the inbox")
        held.close()
        # It says why it stopped: its worker went away, not a clean stop.
        assert workers_in(store, 60.0)[0].state == "down"
    finally:
        if serve.poll() is None:
            serve.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        store.close()
