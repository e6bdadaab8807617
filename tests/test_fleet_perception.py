"""What the cloud does with ``none``, regions and ``ir`` (issue 11): fleet ingest over a real
Mosquitto into the real fleet store, SQLite and PostgreSQL (tests/conftest.py BOTH_BACKENDS; a
fleet.db written before the columns existed is SQLite's; PostgreSQL's upgrade is in
tests/test_fleet_postgres.py),
counts that keep cats and dogs apart from ``none`` and ``abstain``, and feedback scored over
cat/dog/none."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cloud.analysis.drift import performance
from cloud.fleet import schema
from cloud.fleet.backends import PgTarget, open_writer
from cloud.fleet.errors import BadRequest
from cloud.fleet.feedback import label_prediction
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from shared.broker import EmbeddedBroker
from shared.protocol import IR_FLAG, Kind, Prediction, PredictionBatch, PredRegion
from tests.fleetutil import cloud_cfg, fleet_section, only_backends, wait_for
from tests.simdevice import SimDevice

T0 = 1_795_500_000.0


def _store(tmp_path: Path) -> FleetStore:
    """A fresh fleet store on the backend the test runs on."""
    url = fleet_section().get("database_url")
    return FleetStore(PgTarget(url) if url else tmp_path / "fleet.db")


def _writer(store: FleetStore) -> Any:
    """The backend's own ingest writer for ``store``'s database."""
    return open_writer(getattr(store, "target", store.path))


def pred(seq: int, label: str = "cat", **kw: Any) -> Prediction:
    conf = kw.pop("confidence", 0.9)
    return Prediction(
        seq=seq,
        ts=kw.pop("ts", T0 + seq),
        camera="gate",
        label=label,
        confidence=conf,
        probs={"cat": 0.05, "dog": 0.05, "none": 0.9} if label == "none" else {label: conf},
        model_version="m1",
        **kw,
    )


def send(dev: SimDevice, preds: list[Prediction], schema: int) -> None:
    batch = PredictionBatch(
        schema_version=schema,
        device=dev.device,
        site=dev.site,
        predictions=preds,
    )
    dev.publish(Kind.PREDICTIONS, batch)


def mixed_batches(dev: SimDevice) -> None:
    """Schema 2 with regions and ir, then an old-style schema-1 batch carrying ir as a flag."""
    send(
        dev,
        [
            pred(
                1,
                "cat",
                regions=[
                    PredRegion(box=[10, 20, 300, 200], label="cat", confidence=0.93),
                    PredRegion(box=[900, 400, 256, 256], label="dog", confidence=0.81),
                ],
                ir=False,
            ),
            pred(2, "none", ir=True),
            pred(3, "abstain", abstain=True, confidence=0.4, ir=True),
            pred(4, "dog", regions=[PredRegion(box=[0, 0, 64, 64], label="dog", confidence=0.7)], ir=True),
        ],
        schema=2,
    )
    send(
        dev,
        [
            pred(5, "none", flags=[IR_FLAG]),
            pred(6, "cat", flags=[IR_FLAG, "blurred"]),
            pred(7, "dog"),  # an old box: lighting not said
        ],
        schema=1,
    )


def test_ingest_stores_regions_and_ir_from_schema2_and_the_ir_flag_of_schema1(
    tmp_path: Path, broker: EmbeddedBroker, fleet_backend: str
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    ing = FleetIngest(cfg)
    ing.start()
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="box1").connect()
    try:
        assert ing.wait_connected(10)
        mixed_batches(dev)
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 7, what="7 predictions stored")
        mixed_batches(dev)  # redelivered (a lost PUBACK): stored once, and counted once
        dev.flush()
        wait_for(lambda: store.counters().get("duplicates.predictions") == 7, what="duplicates seen")
        # A batch overlapping what is stored (an outbox resending its tail with one new row).
        send(dev, [pred(7, "dog"), pred(8, "none", ir=False)], schema=2)
        dev.flush()
        wait_for(lambda: store.prediction_count() == 8, what="the new row of the overlap")
        # SQLite stores a row again once it is gone (INSERT OR IGNORE), so a row deleted by hand
        # comes back as a late row into a hole. PostgreSQL judges a row new by the device's
        # max_seq and its open gaps (a redelivery may land in another day's partition), so a row
        # deleted by hand stays a duplicate there; its late rows into real gaps are tested in
        # tests/test_fleet_postgres.py.
        again = int(fleet_backend == "sqlite")
        if again:
            store.execute("DELETE FROM predictions WHERE seq=8")
            send(dev, [pred(8, "none", ir=False)], schema=2)
            dev.flush()
            wait_for(lambda: store.prediction_count() == 8, what="the late row")
    finally:
        dev.disconnect()
        ing.stop()
    p1 = store.prediction("box1:1")
    assert p1.regions == [
        {"box": [10, 20, 300, 200], "label": "cat", "confidence": 0.93},
        {"box": [900, 400, 256, 256], "label": "dog", "confidence": 0.81},
    ]
    assert p1.ir == 0
    assert [store.prediction(f"box1:{i}").ir for i in range(2, 8)] == [1, 1, 1, 1, 1, None]
    assert store.prediction("box1:2").regions is None and store.prediction("box1:2").label == "none"
    # The schema-1 ir flag is the lighting, not an integrity problem: it leaves the flags.
    assert store.prediction("box1:5").flags is None
    assert store.prediction("box1:6").flags == ["blurred"]

    out = store.outcomes(device="box1")
    # Seq 8 was counted twice on SQLite: stored, deleted by hand, stored again; the rest once each.
    assert out.pets == {"cat": 2, "dog": 2} and out.pet_total == 4
    assert out.none == 3 + again and out.abstain == 1 and out.total == 8 + again
    assert out.ir == 5 and out.day == 2 + again and out.lighting_unknown == 1
    assert out.ir_share == pytest.approx(5 / (7 + again))
    assert store.outcomes_by_device(["box1", "ghost"], since=0)["ghost"].total == 0

    # The same counts and the regions on the command line.
    import json

    from click.testing import CliRunner

    from shared.cli import main
    from tests.test_governance_alerts import _write_cfg

    env = {
        "PARKWATCH_CONFIG": str(
            _write_cfg(
                tmp_path,
                cfg.model_copy(
                    update={"analysis": cfg.analysis.model_copy(update={"window_s": 2_592_000.0})}
                ),
            )
        )
    }
    r = CliRunner().invoke(main, ["cloud", "health", "--device", "box1"], env=env)
    assert r.exit_code == 0, r.output
    assert "outcomes since 2026-11-0" in r.output and "(window 720 h, whole hours)" in r.output
    ir_pct = "62%" if again else "71%"
    assert f"cat 2, dog 2 (cats and dogs 4), none {3 + again}, abstain 1; IR {ir_pct} of frames" in r.output
    r = CliRunner().invoke(main, ["cloud", "health", "--device", "box1", "--json"], env=env)
    assert json.loads(r.output)["outcomes"]["pets"] == {"cat": 2, "dog": 2}
    r = CliRunner().invoke(main, ["cloud", "lineage", "box1:1"], env=env)
    assert r.exit_code == 0, r.output
    assert "lighting   day" in r.output
    assert "regions    cat 0.93 at (10,20 300x200); dog 0.81 at (900,400 256x256)" in r.output


def _old_fleet_db(path: Path) -> None:
    """A fleet.db as the cloud wrote it before issue 11: no regions, no ir column."""
    ddl = schema.DDL.replace("    regions TEXT,\n    ir INTEGER,\n", "")
    assert "regions" not in ddl
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    conn.execute(
        "INSERT INTO predictions(device, seq, site, camera, ts, label, confidence, probs, model_version, "
        "abstain, flags, received_ts) VALUES ('box1', 1, 'park1', 'gate', ?, 'dog', 0.9, NULL, 'm1', 0, "
        "NULL, ?)",
        (T0, T0),
    )
    conn.execute("INSERT INTO devices(device, site, max_seq) VALUES ('box1', 'park1', 1)")
    conn.commit()
    conn.close()


@only_backends("sqlite")
def test_a_fleet_db_from_before_the_columns_is_upgraded_in_place_and_ingest_goes_on(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    cfg = cloud_cfg(tmp_path, broker)
    cfg.paths.fleet_db.parent.mkdir(parents=True)
    _old_fleet_db(cfg.paths.fleet_db)
    ing = FleetIngest(cfg)
    ing.start()
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="box1").connect()
    dev.seq = 1
    try:
        assert ing.wait_connected(10)
        send(
            dev,
            [
                pred(
                    2,
                    "cat",
                    ts=T0 + 3 * 3600,
                    ir=True,
                    regions=[PredRegion(box=[1, 2, 3, 4], label="cat", confidence=0.8)],
                )
            ],
            schema=2,
        )
        dev.flush()
        store = FleetStore(cfg.paths.fleet_db)
        wait_for(lambda: store.prediction_count() == 2, what="the new row beside the old one")
    finally:
        dev.disconnect()
        ing.stop()
    cols = [r[1] for r in sqlite3.connect(cfg.paths.fleet_db).execute("PRAGMA table_info(predictions)")]
    assert cols[-2:] == ["regions", "ir"]
    old = store.prediction("box1:1")
    assert old.label == "dog" and old.regions is None and old.ir is None
    new = store.prediction("box1:2")
    assert new.ir == 1 and new.regions is not None and new.regions[0]["box"] == [1, 2, 3, 4]
    assert store.gaps() == []
    # The hourly outcome counts were built from the rows already there, then kept by ingest.
    out = store.outcomes(device="box1")
    assert out.pets == {"cat": 1, "dog": 1} and out.ir == 1 and out.lighting_unknown == 1
    # Opening it again (another process, a restart) is harmless and counts nothing twice.
    FleetStore(cfg.paths.fleet_db).close()
    assert FleetStore(cfg.paths.fleet_db).outcomes(device="box1").total == 2
    # Retention drops whole hours of counts with the rows they counted.
    assert store.prune(T0 + 3600)["outcome_hours"] == 1
    assert store.outcomes(device="box1").pets == {"cat": 1, "dog": 0}


def test_operators_label_none_and_performance_scores_cat_dog_none(tmp_path: Path) -> None:
    store = _store(tmp_path)
    from cloud.fleet.writer import Incoming
    from shared.protocol import parse_topic

    topic = "parkwatch/v1/dev/park1/box1/predictions"
    preds = [
        pred(1, "cat"),
        pred(2, "none"),
        pred(3, "dog"),
        pred(4, "none"),
        pred(5, "abstain", abstain=True),
    ]
    batch = PredictionBatch(schema_version=2, device="box1", site="park1", predictions=preds)
    w = _writer(store)
    w.write([Incoming(parse_topic(topic), batch, T0)])
    w.db.close()
    label_prediction(store, "cat", "ana", prediction_id="box1:1")  # right
    label_prediction(store, "none", "ana", prediction_id="box1:2")  # right: sure, and no pet
    label_prediction(store, "none", "ana", prediction_id="box1:3")  # a dog call on an empty frame
    label_prediction(store, "dog", "ana", prediction_id="box1:4")  # a dog the model called none
    label_prediction(store, "neither", "ana", prediction_id="box1:5")  # older name, abstained
    with pytest.raises(BadRequest, match="none"):
        label_prediction(store, "horse", "ana", prediction_id="box1:1")
    # Over HTTP (the router the dashboard mounts): none accepted, a made-up label refused.
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from cloud.fleet.http import feedback_router

    app = FastAPI()
    app.include_router(feedback_router(store))
    http = TestClient(app)
    r = http.post("/api/feedback", json={"prediction_id": "box1:2", "label": "none", "actor": "ben"})
    assert r.status_code == 201 and r.json()["label"] == "none" and r.json()["predicted"] == "none"
    assert (
        http.post(
            "/api/feedback", json={"prediction_id": "box1:2", "label": "empty", "actor": "b"}
        ).status_code
        == 422
    )
    fb = store.feedback()
    assert [f.label for f in fb] == ["cat", "none", "none", "dog", "none"]
    perf = performance(fb, ["cat", "dog", "none"])
    assert perf["n_labels"] == 4 and perf["accuracy"] == 0.5
    assert perf["recall"] == {"cat": 1.0, "dog": 0.0, "none": 0.5}
    assert perf["precision"] == {"cat": 1.0, "dog": 0.0, "none": 0.5}
    assert perf["recall_gap"] == 1.0  # between cat and dog only
    conf = perf["confusion"]
    assert conf["labels"] == ["cat", "dog", "none"] and conf["columns"] == ["cat", "dog", "none", "abstain"]
    assert conf["matrix"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]]
    # A cat/dog-only model's classes still get a none row when operators say none.
    assert performance(fb, ["cat", "dog"])["confusion"]["labels"] == ["cat", "dog", "none"]


# --- analysis: none as a class, and per lighting mode --------------------------------------------


def _baseline() -> Any:
    """A cat/dog model's test-set baseline (no none class): confident, half cats, 97 % right."""
    import numpy as np

    from cloud.analysis.drift_baseline import from_samples

    rng = np.random.default_rng(0)
    labels = ["cat" if i % 2 else "dog" for i in range(2000)]
    return from_samples("m1", labels, list(0.9 + 0.1 * rng.random(2000)), 0.97, 0.6)


def _write(store: FleetStore, preds: list[Prediction], device: str = "box1") -> None:
    from cloud.fleet.writer import Incoming
    from shared.protocol import parse_topic

    topic = f"parkwatch/v1/dev/park1/{device}/predictions"
    w = _writer(store)
    for i in range(0, len(preds), 1000):
        b = PredictionBatch(schema_version=2, device=device, site="park1", predictions=preds[i : i + 1000])
        w.write([Incoming(parse_topic(topic), b, T0)])
    w.db.close()


def _field(
    n_day: int, n_ir: int, ir_conf: tuple[float, float], none_share: float, seed: int = 1
) -> list[Prediction]:
    """Day frames like the test set; IR frames whose confidence lies in ``ir_conf``."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n_day + n_ir):
        ir = i >= n_day
        lo, hi = ir_conf if ir else (0.9, 1.0)
        label = "none" if rng.random() < none_share else ("cat" if rng.random() < 0.5 else "dog")
        out.append(pred(i + 1, label, confidence=round(rng.uniform(lo, hi), 4), ts=T0 + i * 0.01, ir=ir))
    return out


def test_none_frames_do_not_read_as_class_mix_or_confidence_drift(tmp_path: Path) -> None:
    from cloud.analysis.config import AnalysisConfig
    from cloud.analysis.drift import analyze

    store = _store(tmp_path)
    # An empty park: 70 % of frames are none, the pets it does see are half cats as on the test set.
    _write(store, _field(1500, 0, (0.9, 1.0), none_share=0.7))
    acfg = AnalysisConfig(window_s=3600)
    rows, findings, covered = analyze(store, acfg, T0 + 100, "r1", lambda v: _baseline())
    site = next(r for r in rows if r["device"] == "")
    det = site["details"]
    assert findings == [] and site["drifted"] == 0
    assert site["psi"] < 0.05  # judged on the pet mix: none is the scene, not the model
    assert det["none_share"] == pytest.approx(0.7, abs=0.05)
    assert set(det["pet_mix"]) == {"cat", "dog"} and "none" in det["class_mix"]
    assert det["confidence_compared"] == "pet calls and abstentions"
    assert det["counts"]["none"] + sum(det["counts"]["pets"].values()) == 1500
    assert set(det["est_precision"]) == {"cat", "dog", "none"}
    assert ("park1", "m1") in covered and ("park1", "m1@day") in covered


def test_night_frames_drift_alone_and_a_small_mode_is_not_judged(tmp_path: Path) -> None:
    from cloud.analysis.config import AnalysisConfig
    from cloud.analysis.drift import analyze

    store = _store(tmp_path)
    # Day frames as on the test set; 120 IR frames at night much less sure: hidden in the total.
    _write(store, _field(2000, 120, (0.62, 0.72), none_share=0.3), device="box1")
    # Another box of the site saw only 20 IR frames: too few to judge that mode on its own.
    _write(store, _field(300, 20, (0.62, 0.72), none_share=0.3, seed=2), device="box2")
    acfg = AnalysisConfig(window_s=3600)
    rows, findings, covered = analyze(store, acfg, T0 + 100, "r1", lambda v: _baseline())
    site = next(r for r in rows if r["device"] == "")
    det = site["details"]
    # box1 and box2 share a site: 2440 frames, 140 of them IR.
    assert det["modes"]["ir"]["n"] == 140 and det["modes"]["day"]["n"] == 2300
    assert not any(f.subject == "m1" for f in findings), [f.message for f in findings]
    ir_rules = {f.rule for f in findings if f.subject == "m1@ir"}
    assert {"confidence_drift", "estimated_accuracy_drop"} <= ir_rules
    assert all(f.details["lighting"] == "ir" for f in findings if f.subject == "m1@ir")
    assert not any(f.subject == "m1@day" for f in findings)
    assert ("park1", "m1@ir") in covered
    assert det["modes"]["ir"]["baseline_for_mode"] is False
    # Per device: box2's 20 IR frames are figures only.
    box2 = next(r for r in rows if r["device"] == "box2")["details"]["modes"]["ir"]
    assert box2["n"] == 20 and box2["enough_samples"] is False and box2["verdict"] == []


def test_analyze_report_and_cli_show_each_lighting_mode(tmp_path: Path, broker: EmbeddedBroker) -> None:
    import json

    from click.testing import CliRunner

    from cloud.analysis.job import run_analysis
    from shared.cli import main
    from tests.test_analysis_drift import register_model
    from tests.test_governance_alerts import _write_cfg

    cfg = cloud_cfg(tmp_path, broker, analysis={"window_s": 3600})
    register_model(cfg)
    store = FleetStore(cfg.fleet_store)
    import time

    now = time.time()
    preds = _field(400, 150, (0.62, 0.72), none_share=0.4)
    _write(store, [p.model_copy(update={"ts": now - 600 + p.seq * 0.01}) for p in preds])
    rep = run_analysis(cfg, store, None, now=now)
    html = (cfg.paths.reports_dir / "analysis-latest.html").read_text()
    assert "Per lighting mode" in html and "mode-ir" in html and "mode-day" in html
    assert "none share" in html and "abstain" in html
    site = next(d for d in rep["drift"] if not d["device"])
    assert site["details"]["modes"]["ir"]["verdict"]
    t = rep["totals"]
    assert (
        t["none"] + sum(t["pets"].values()) == 550 and t["abstain"] == 0 and set(t["pets"]) == {"cat", "dog"}
    )
    assert "<p id='totals-outcomes'>Outcomes: cat " in html
    env = {"PARKWATCH_CONFIG": str(_write_cfg(tmp_path, cfg))}
    r = CliRunner().invoke(main, ["cloud", "analyze", "--no-alerts"], env=env)
    assert r.exit_code == 0, r.output
    assert "    ir: n=150" in r.output and "    day: n=400" in r.output
    assert "DRIFT" in r.output.split("    ir: n=150")[1].splitlines()[0]
    assert "outcomes: cat" in r.output and " none " in r.output
    r = CliRunner().invoke(main, ["cloud", "analyze", "--no-alerts", "--json"], env=env)
    assert set(json.loads(r.output)["drift"][0]["details"]["modes"]) == {"day", "ir"}


def test_a_baseline_with_none_per_class_histograms_and_lighting_modes_is_read_and_used() -> None:
    """The registry/evaluation format with ``none`` in the mix, per-class confidence histograms
    and an IR baseline (e.g. from greyscale scene copies): parsed, round-tripped, and an IR cohort
    is judged against the IR baseline, class mix included."""
    from cloud.analysis.config import AnalysisConfig
    from cloud.analysis.drift import Cohort, figures
    from cloud.analysis.drift_baseline import Baseline

    def hist(lo: int) -> list[int]:
        return [0] * lo + [10] * (20 - lo)

    d = {
        "prediction_mix": {"cat": 0.3, "dog": 0.3, "none": 0.4},
        "confidence_hist": {"bins": 20, "range": [0.0, 1.0], "counts": hist(18)},
        "confidence_hist_by_class": {"cat": hist(18), "dog": hist(18), "none": {"counts": hist(10)}},
        "modes": {
            "ir": {
                "prediction_mix": {"cat": 0.2, "dog": 0.4, "none": 0.4},
                "confidence_hist": {"bins": 20, "range": [0.0, 1.0], "counts": hist(12)},
            }
        },
    }
    base = Baseline.from_dict("m1", d, "registry:metrics.baseline", accuracy=0.96)
    assert base.class_mix["none"] == pytest.approx(0.4) and set(base.by_class) == {"cat", "dog", "none"}
    assert base.modes["ir"].class_mix["dog"] == pytest.approx(0.4)
    again = Baseline.from_dict("m1", base.to_dict(), "copy")
    assert again.by_class == base.by_class and again.modes["ir"].counts == base.modes["ir"].counts
    with pytest.raises(ValueError, match="confidence_hist_by_class"):
        Baseline.from_dict("m1", {**d, "confidence_hist_by_class": {"cat": [1, 2]}}, "bad")

    c = Cohort("m1", "park1")
    for i in range(400):  # night: mostly dogs, as the IR baseline says; and not very sure
        label = "none" if i % 5 < 2 else ("cat" if i % 5 == 2 else "dog")
        c.add(label, 0.65 + (i % 7) * 0.04, False, False, True)
    fig = figures(c, base, [], AnalysisConfig())
    ir = fig["modes"]["ir"]
    assert ir["baseline_for_mode"] is True and ir["psi"] is not None
    # Against the IR baseline the 1:2 cat/dog mix and this confidence are no news...
    assert [r for r, _ in ir["verdict"] if r == "class_mix_drift"] == []
    # ...against the day baseline (the whole cohort here is IR) the mix has moved.
    assert "class_mix_drift" in [r for r, _ in fig["verdict"]]
    assert fig["confidence_compared"] == "pet calls and abstentions"
    assert fig["counts"] == {"pets": {"cat": 80, "dog": 160}, "none": 160, "abstain": 0}


def test_regions_text_lists_a_few_and_says_how_many_more() -> None:
    from cloud.fleet.outcomes import regions_text

    regions = [{"box": [i, 0, 10, 10], "label": "dog", "confidence": 0.9} for i in range(6)]
    assert regions_text(regions, limit=2) == "dog 0.90 at (0,0 10x10); dog 0.90 at (1,0 10x10) (+4 more)"
    assert regions_text(regions).count("dog") == 6 and regions_text(None) == ""
