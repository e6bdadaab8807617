"""A PUBACK that says "no matching subscribers" is not a delivery (issue 15, A1).

Real parts only: the box is the daemon in-process, the broker a real Mosquitto, the cloud the
real fleet ingest with its SQLite store. Mosquitto answers a QoS-1 publish nobody subscribed to
with PUBACK reason code 16; a box that took that as delivered deleted the rows (seq 1-77 lost in
the field). Here the box must keep every row, say why on its status page, and deliver each seq
once the ingest subscribes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from edge.daemon import Daemon
from shared.broker import EmbeddedBroker
from tests.edge_fixtures import edge_config, make_tiny_package
from tests.fleetutil import cloud_cfg

TOKEN = "no-subscriber-token"


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def box(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Daemon]:
    monkeypatch.setenv("PW_STATUS_TOKEN", TOKEN)
    cfg = edge_config(
        tmp_path,
        broker,
        [{"id": "c1", "kind": "folder", "url": str(pets_sample), "fps": 20}],
        make_tiny_package(tmp_path / "pkg", "v1"),
        outbox={"batch_size": 16, "flush_interval_s": 0.2},
        status_page={"enabled": True, "port": 0, "token": {"env": "PW_STATUS_TOKEN"}},
    )
    d = Daemon(cfg).start()
    try:
        yield d
    finally:
        d.stop()


def status_page(d: Daemon) -> str:
    r = httpx.get(f"{d.status_url}/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    r.raise_for_status()
    return r.text


def ingest(tmp_path: Path, broker: EmbeddedBroker) -> FleetIngest:
    ing = FleetIngest(cloud_cfg(tmp_path, broker))
    ing.start()
    assert ing.wait_connected(15), "ingest did not connect"
    return ing


def wait_kept_back(d: Daemon, more: int) -> None:
    """The box is connected and issues ``more`` new rows while nobody subscribes: every one of
    them must still be in the outbox, and the publisher must say why."""
    assert d.outbox is not None and d.publisher is not None
    ob, pub = d.outbox, d.publisher
    wait_for(lambda: d.mqtt.connected, 15, "the box to connect")
    start_seq, start_backlog = ob.last_seq, ob.backlog
    wait_for(lambda: ob.last_seq >= start_seq + more, 30, f"{more} new predictions")
    wait_for(lambda: pub.batches_sent >= 1 and not pub.inflight, 30, "a PUBACK for what was sent")
    kept = ob.backlog - start_backlog
    assert kept >= ob.last_seq - start_seq - pub.inflight, (
        f"{ob.last_seq - start_seq} rows issued with nobody subscribed, only {kept} kept: "
        "rows were deleted although nobody received them"
    )
    und = pub.undelivered()
    assert und is not None and und["no_subscriber"] and und["batches_not_delivered"] >= 1


def drain_and_check(d: Daemon, store: FleetStore) -> int:
    """Wait until the cloud holds every seq the box issued; return the last seq."""
    assert d.outbox is not None and d.publisher is not None
    ob, pub = d.outbox, d.publisher
    wait_for(lambda: pub.undelivered() is None, 60, "the box to notice the subscriber")
    for c in d.cameras:
        c.stop()  # no new rows: the backlog can reach 0 and stay there
    wait_for(
        lambda: ob.backlog == 0 and store.prediction_count("box1") == ob.last_seq,
        60,
        "the outbox to drain into the cloud store",
    )
    last = ob.last_seq
    assert store.device("box1").max_seq == last
    assert store.gaps() == [], "a seq never reached the cloud"
    return last


def test_box_keeps_predictions_until_the_ingest_subscribes_then_delivers_each_once(
    tmp_path: Path, broker: EmbeddedBroker, box: Daemon
) -> None:
    wait_kept_back(box, 40)
    assert box.outbox is not None
    assert box.outbox.backlog == box.outbox.last_seq, "a row was deleted although nobody received it"
    page = status_page(box)
    assert "broker has no subscriber for predictions" in page
    assert "waiting, retrying in" in page
    ing = ingest(tmp_path, broker)
    store = FleetStore(cloud_cfg(tmp_path, broker).paths.fleet_db)
    try:
        last = drain_and_check(box, store)
        assert last >= 40
        # exactly once: the probe/back-off never had the same rows in flight twice
        assert store.counters().get("duplicates.predictions", 0) == 0
        assert "no subscriber" not in status_page(box)
    finally:
        ing.stop()
        store.close()


def test_broker_restart_that_lost_the_ingest_session_loses_nothing(
    tmp_path: Path, broker: EmbeddedBroker, box: Daemon
) -> None:
    ing = ingest(tmp_path, broker)
    store = FleetStore(cloud_cfg(tmp_path, broker).paths.fleet_db)
    try:
        assert box.outbox is not None
        wait_for(lambda: store.prediction_count("box1") >= 20, 30, "first predictions stored")
        # The broker comes back without the ingest's session (no persistence, or its file lost):
        # until the ingest resubscribes, every publish is answered "no matching subscribers".
        broker.stop()
        ing.stop()
        (broker.workdir / "mosquitto.db").unlink(missing_ok=True)
        broker.start()
        wait_kept_back(box, 30)
        ing = ingest(tmp_path, broker)
        drain_and_check(box, store)
    finally:
        ing.stop()
        store.close()
