"""Hostile device payloads against the real decoder, the real ingest and the real readers.

Before the fix: a prediction with ts=1e300 was stored and crashed ``cloud lineage``; telemetry
with ts=1e12 made the device page answer 500; a prediction naming snapshot ``../registry`` was
stored and the id globbed by retraining (matching ``registry.db`` beside the snapshots folder);
camera names and ``probs`` keys were unbounded; no per-device snapshot quota existed.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.config import CloudConfig
from cloud.fleet.feedback import label_prediction
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.schema import connect
from cloud.fleet.snapshots import SnapshotQuota, store_snapshot
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import BatchWriter, Incoming
from cloud.governance.actions import feedback_frames
from cloud.lineage import lineage
from shared.broker import EmbeddedBroker
from shared.protocol import (
    InvalidPayload,
    Kind,
    Prediction,
    PredictionBatch,
    Snapshot,
    Telemetry,
    Topics,
    decode,
    encode,
    parse_topic,
)
from shared.protocol.bounds import (
    EARLIEST_TS,
    MAX_FUTURE_SKEW_S,
    MAX_KEYS,
    prediction_problem,
    prediction_within,
)
from tests.dashutil import client_for, seed_users, sign_in
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice

NOW = time.time()
TOPIC_P = Topics.device("park1", "box1", Kind.PREDICTIONS)
TOPIC_T = Topics.device("park1", "box1", Kind.TELEMETRY)


def _pred(seq: int = 1, **kw: object) -> Prediction:
    base: dict[str, object] = {
        "seq": seq,
        "ts": NOW,
        "camera": "gate",
        "label": "dog",
        "confidence": 0.9,
        "probs": {"cat": 0.1, "dog": 0.9},
        "model_version": "m1",
    }
    return Prediction.model_validate({**base, **kw})


def _batch(*preds: Prediction) -> bytes:
    return encode(PredictionBatch(device="box1", site="park1", predictions=list(preds)))


def _telemetry(**kw: object) -> bytes:
    base: dict[str, object] = {
        "device": "box1",
        "site": "park1",
        "cpu_percent": 1.0,
        "memory_percent": 1.0,
        "disk_percent": 1.0,
        "uptime_process_s": 1.0,
        "uptime_system_s": 1.0,
    }
    return encode(Telemetry.model_validate({**base, **kw}))


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_batch(_pred(ts=1e300)), "timestamp"),
        (_batch(_pred(ts=-5.0)), "timestamp"),
        (_batch(_pred(ts=NOW + 3 * 86400)), "timestamp"),
        (_batch(_pred(frame_ts=1e12)), "timestamp"),
        (_batch(_pred(snapshot="../registry")), "snapshot id"),
        (_batch(_pred(camera="x" * 1_500_000)), "not an id"),
        (_batch(_pred(camera="gate/../../etc")), "not an id"),
        (_batch(_pred(probs={f"k{i}": 0.0 for i in range(MAX_KEYS + 1)})), "entries"),
        (_batch(_pred(probs={"x" * 200: 0.5})), "characters"),
        (_batch(_pred(model_version="m" * 500)), "model_version"),
    ],
)
def test_prediction_bounds_are_refused_at_decode(payload: bytes, words: str) -> None:
    with pytest.raises(InvalidPayload, match=words):
        decode(TOPIC_P, payload)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_telemetry(ts=1e12), "timestamp"),
        (_telemetry(cameras={f"cam{i}": {"state": "streaming"} for i in range(MAX_KEYS + 1)}), "entries"),
        (_telemetry(cameras={"bad name": {"state": "streaming"}}), "not an id"),
        (_telemetry(temperatures={f"t{i}": 40.0 for i in range(MAX_KEYS + 1)}), "entries"),
        (_telemetry(cpu_per_core=[1.0] * 10_000), "entries"),
        (_telemetry(model_version="v" * 100), "model_version"),
    ],
)
def test_telemetry_bounds_are_refused_at_decode(payload: bytes, words: str) -> None:
    with pytest.raises(InvalidPayload, match=words):
        decode(TOPIC_T, payload)


def _raw(payload: bytes, **kw: object) -> bytes:
    return json.dumps({**json.loads(payload), **kw}).encode()


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (TOPIC_T, _raw(_telemetry(), outbox_backlog=2**64)),
        (TOPIC_T, _raw(_telemetry(), lost_predictions=2**63)),
        (TOPIC_T, _raw(_telemetry(), invalid_messages={"json": 2**70})),
        (TOPIC_T, _raw(_telemetry(), cameras={"gate": {"state": "streaming", "frames": 2**64}})),
        (TOPIC_P, _raw(_batch(_pred()), evicted_total=2**64)),
    ],
)
def test_counts_beyond_64_bits_are_refused_at_decode(topic: str, payload: bytes) -> None:
    """The stores keep counts as 64-bit integers: a larger one must be refused here, counted as
    invalid, not accepted and then refused by the database."""
    with pytest.raises(InvalidPayload, match="less than or equal"):
        decode(topic, payload)
    # The largest count the stores hold still passes.
    ok = (
        _raw(_telemetry(), outbox_backlog=2**63 - 1)
        if topic == TOPIC_T
        else _raw(_batch(_pred()), evicted_total=2**63 - 1)
    )
    decode(topic, ok)


_names = st.one_of(
    st.sampled_from(["gate", "a", "cam_2.b-c", "x" * 64, "x" * 65, "", "../etc", "bad name", "-lead"]),
    st.text(max_size=70),
)


@settings(max_examples=400, deadline=None)
@given(
    ts=st.one_of(
        st.sampled_from([NOW, EARLIEST_TS, EARLIEST_TS - 1, NOW + MAX_FUTURE_SKEW_S - 5, 1e300, -5.0])
    ),
    frame_ts=st.one_of(st.none(), st.sampled_from([NOW, 1e12, EARLIEST_TS - 0.5])),
    camera=_names,
    label=st.sampled_from(["cat", "none", "l" * 64, "l" * 65]),
    n_probs=st.sampled_from([0, 2, MAX_KEYS, MAX_KEYS + 1]),
    long_key=st.booleans(),
    flags=st.lists(st.sampled_from(["blur", "f" * 65]), max_size=3),
    many_flags=st.booleans(),
    model_version=st.sampled_from(["m1", "m" * 64, "m" * 65]),
    snapshot=st.one_of(st.none(), _names),
)
def test_the_fast_prediction_bounds_agree_with_the_spelled_out_ones(
    ts: float,
    frame_ts: float | None,
    camera: str,
    label: str,
    n_probs: int,
    long_key: bool,
    flags: list[str],
    many_flags: bool,
    model_version: str,
    snapshot: str | None,
) -> None:
    """The materializer's hot path takes the predicate; a refusal is spelled out by the long
    check. The two must never disagree, or a prediction would be refused with no reason, or let
    through against the rule."""
    probs = {f"k{i}": 0.0 for i in range(n_probs)}
    if long_key:
        probs["k" * 65] = 0.1
    p = Prediction.model_construct(
        seq=1,
        ts=ts,
        frame_ts=frame_ts,
        camera=camera,
        label=label,
        confidence=0.5,
        probs=probs,
        flags=flags * 100 if many_flags else flags,
        model_version=model_version,
        snapshot=snapshot,
    )
    within = prediction_within(p, EARLIEST_TS, NOW + MAX_FUTURE_SKEW_S)
    assert within == (prediction_problem(p, "p", NOW) is None)


def test_sane_messages_still_decode() -> None:
    decode(TOPIC_P, _batch(_pred(snapshot="gate-1795500000000-1a2b3c4d", frame_ts=NOW - 1)))
    decode(TOPIC_T, _telemetry(cameras={"gate": {"state": "streaming", "last_frame_ts": NOW}}))


def test_hostile_messages_through_the_real_ingest_are_dead_lettered_and_pages_work(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10)
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="box1").connect()
    try:
        dev.publish_raw(TOPIC_P, _batch(_pred(1, ts=1e300)))
        dev.publish_raw(TOPIC_P, _batch(_pred(2, snapshot="../registry")))
        dev.publish_raw(TOPIC_T, _telemetry(ts=1e12))
        dev.publish_raw(TOPIC_P, _batch(_pred(3)))  # a sane one, last
        dev.flush()
        store = FleetStore(cfg.paths.fleet_db)
        wait_for(lambda: store.prediction_count() == 1, what="the sane prediction stored")
        wait_for(lambda: len(store.dead_letters()) == 3, what="three dead letters")
        assert {d.kind for d in store.dead_letters()} == {"invalid"}
        assert [p.seq for p in store.predictions()] == [3]
    finally:
        dev.disconnect()
        ing.stop()
    assert lineage(cfg, "box1:3")["prediction"]["seq"] == 3
    seed_users(cfg)
    c = client_for(cfg)
    sign_in(c, "viewer")
    assert c.get("/devices/box1").status_code == 200


def test_retraining_never_globs_a_device_chosen_snapshot_id(tmp_path: Path) -> None:
    """Rows stored before the protocol refused such ids must not reach files outside the folder."""
    cfg = CloudConfig.model_validate({"data_dir": str(tmp_path / "cloud")})
    snaps = cfg.data_dir / "snapshots"
    snaps.mkdir(parents=True)
    (cfg.data_dir / "registry.jpg").write_bytes(b"\xff\xd8 not a frame of ours")
    (snaps / "gate-1.jpg").write_bytes(b"\xff\xd8 a frame")
    db = connect(cfg.paths.fleet_db)
    writer = BatchWriter(db)
    parsed = parse_topic(TOPIC_P)
    batch = PredictionBatch(
        device="box1",
        site="park1",
        predictions=[_pred(1, snapshot="../registry"), _pred(2, snapshot="gate-1"), _pred(3, snapshot="*")],
    )
    writer.write([Incoming(parsed, batch, NOW)])
    db.close()
    with FleetStore(cfg.paths.fleet_db) as store:
        for snap in ("../registry", "gate-1", "*"):
            label_prediction(store, "cat", "qa", snapshot=snap)
    assert feedback_frames(cfg, ["cat", "dog"]) == [(snaps / "gate-1.jpg", "cat")]


def test_snapshot_quota_per_device(tmp_path: Path) -> None:
    cfg = CloudConfig.model_validate(
        {"data_dir": str(tmp_path / "cloud"), "dashboard": {"snapshot_sites": ["park1"]}}
    )
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    assert ok
    jpeg = base64.b64encode(buf.tobytes()).decode()
    quota = SnapshotQuota(3)

    def snap(device: str, i: int) -> Snapshot:
        return Snapshot(device=device, site="park1", id=f"{device}-{i}", camera="gate", ts=NOW, jpeg=jpeg)

    got = [store_snapshot(cfg, snap("box1", i), quota, now=NOW + i) for i in range(5)]
    assert got == ["stored"] * 3 + ["over_quota"] * 2
    assert store_snapshot(cfg, snap("box2", 0), quota, now=NOW) == "stored"  # another device's own quota
    assert store_snapshot(cfg, snap("box1", 9), quota, now=NOW + 86_400 + 1) == "stored"  # a day on


def test_rows_stored_before_the_bounds_do_not_break_readers(tmp_path: Path) -> None:
    """Rows an older cloud accepted (ts=1e300, 1e12) stay readable: the CLI and pages never crash."""
    from click.testing import CliRunner

    from cloud.cli import cloud

    cfg = CloudConfig.model_validate({"data_dir": str(tmp_path / "cloud")})
    db = connect(cfg.paths.fleet_db)
    writer = BatchWriter(db)
    batch = PredictionBatch(device="box1", site="park1", predictions=[_pred(1, ts=1e300)])
    writer.write([Incoming(parse_topic(TOPIC_P), batch, NOW)])
    tele = Telemetry.model_validate_json(_telemetry()).model_copy(update={"ts": 1e12})
    writer.write([Incoming(parse_topic(TOPIC_T), tele, NOW)])
    db.close()
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'data_dir = "{cfg.data_dir}"\n')
    r = CliRunner().invoke(cloud, ["lineage", "box1:1", "--config", str(toml)])
    assert r.exit_code == 0 and "1e+300" in r.output, r.output
    seed_users(cfg)
    c = client_for(cfg)
    sign_in(c, "viewer")
    assert c.get("/devices/box1").status_code == 200
