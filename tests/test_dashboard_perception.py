"""The dashboard's none / abstain / regions / IR views (issue 11), through the real app factory
over HTTP, on a fleet store (SQLite and PostgreSQL) written by the real ingest writer and a real
analysis run."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cloud.analysis.job import run_analysis
from cloud.dashboard.regions import jpeg_size
from cloud.fleet.backends import open_writer
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import Incoming
from shared.protocol import Kind, Prediction, PredictionBatch, PredRegion, Topics, parse_topic
from tests.dashutil import client_for, make_cfg, seed_fleet, seed_users, sign_in
from tests.test_fleet_perception import _baseline


def _preds(now: float, n_day: int, n_ir: int) -> list[Prediction]:
    out = []
    for i in range(n_day + n_ir):
        ir = i >= n_day
        k = i % 5
        label = ("cat", "dog", "none", "none", "abstain")[k]
        regions = (
            [PredRegion(box=[10, 20, 300, 200], label="cat", confidence=0.93)]
            if label == "cat"
            else [PredRegion(box=[640, 360, 128, 96], label="dog", confidence=0.81)]
            if label == "dog"
            else []
        )
        out.append(
            Prediction(
                seq=i + 1,
                ts=now - 600 + i * 0.5,
                camera="cam1",
                label=label,
                confidence=0.5 if label == "abstain" else (0.66 if ir else 0.95),
                model_version="m1",
                abstain=label == "abstain",
                regions=regions,
                ir=ir,
                snapshot=f"boxpet-snap-{i + 1}" if i < 2 else None,
            )
        )
    return out


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    c = make_cfg(tmp_path, dashboard={"snapshot_sites": ["park1"]}, fleet={"heartbeat_timeout_s": 600})
    seed_users(c)
    seed_fleet(c, devices=1, hours=0.2, step_s=60)  # box0000: telemetry only, no predictions
    now = time.time()
    store = FleetStore(c.fleet_store)
    batch = PredictionBatch(
        schema_version=2, device="boxpet", site="park1", predictions=_preds(now, 200, 150)
    )
    topic = parse_topic(Topics.device("park1", "boxpet", Kind.PREDICTIONS))
    writer = open_writer(c.fleet_store)  # the backend's own writer (tests/conftest.py BOTH_BACKENDS)
    writer.write([Incoming(topic, batch, now)])
    writer.db.close()
    snaps = c.data_dir / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", np.zeros((720, 1280, 3), np.uint8))
    assert ok
    (snaps / "boxpet-snap-1.jpg").write_bytes(buf.tobytes())
    # Scaled down on the box (too large for the message): its regions reach outside it.
    ok, small = cv2.imencode(".jpg", np.zeros((180, 320, 3), np.uint8))
    (snaps / "boxpet-snap-2.jpg").write_bytes(small.tobytes())
    run_analysis(c, store, None, now=now, baseline_of=lambda v: _baseline())
    return c


def test_fleet_and_device_pages_keep_cats_dogs_none_and_abstain_apart(cfg: Any) -> None:
    c = client_for(cfg)
    sign_in(c, "viewer")
    html = c.get("/").text
    line = re.search(r'<p id="fleet-outcomes">(.*?)</p>', html, re.S)
    assert line, html[:2000]
    # 350 frames: 70 cat, 70 dog, 140 none, 70 abstain; 150 of them IR.
    assert 'data-outcome="cat">cat 70<' in line.group(1) and 'data-outcome="dog">dog 70<' in line.group(1)
    assert 'data-outcome="none" title="sure there is no cat or dog">none 140<' in line.group(1)
    assert ">abstain 70<" in line.group(1) and "cats and dogs 140" in line.group(1)
    assert 'data-ir-share="0.429"' in line.group(1)
    row = html[html.index('data-device="boxpet"') :]
    row = row[: row.index("</tr>")]
    assert ">none 140<" in row and "IR 43 %" in row
    quiet = html[html.index('data-device="box0000"') :]
    assert '<td class="hide-narrow seen"><span class="muted">—</span>' in quiet[: quiet.index("</tr>")]

    page = c.get("/devices/boxpet", params={"window": "1h"}).text
    seen = re.search(r'<p id="device-outcomes">(.*?)</p>', page, re.S)
    assert seen and "350 predictions" in seen.group(1) and "cats and dogs 140" in seen.group(1)
    # Recent predictions: outcome, lighting and the regions as text.
    table = page[page.index('id="recent-predictions"') :]
    assert "cat 0.93 at (10,20 300x200)" in table or "dog 0.81 at (640,360 128x96)" in table
    assert "<td>ir</td>" in table
    # Drift per lighting mode for this device, from the analysis run: both modes judged here.
    assert 'data-mode="day"' in page and 'data-mode="ir"' in page
    ir_row = page[page.index('data-mode="ir"') :]
    assert "✖ drift" in ir_row[: ir_row.index("</tr>")]  # the IR frames are far less sure
    # A device page with no predictions still renders.
    other = c.get("/devices/box0000").text
    assert "No predictions stored for this device" in other and "No analysis of this device yet" in other


def test_quality_page_shows_modes_none_share_and_the_cat_dog_none_confusion(cfg: Any) -> None:
    c = client_for(cfg)
    token = sign_in(c, "engineer")
    html = c.get("/quality").text
    assert 'class="modes-table"' in html and 'data-mode="ir"' in html
    assert "none share" in html and "judged on cats and dogs only" in html
    # Label the snapshot "none" on the labelling page: it holds no pet after all.
    lab = c.get("/labelling").text
    assert 'name="label" value="none"' in lab and 'value="neither"' not in lab
    r = c.post("/labelling/boxpet-snap-1", data={"label": "none", "csrf_token": token})
    c.post("/labelling/boxpet-snap-2", data={"label": "dog", "csrf_token": token})
    assert r.status_code == 200 and "Labelled boxpet:1 as none" in r.text
    assert sorted(f.label for f in FleetStore(cfg.fleet_store).feedback()) == ["dog", "none"]
    html = c.get("/quality").text
    assert "1 labelled “none”" in html
    m = re.search(r'<tr data-label="none"><th scope="row">none</th>(.*?)</tr>', html)
    assert m, "confusion matrix has a none row"
    # The model said cat (column 1) for a frame labelled none.
    assert re.findall(r'<td class="num">(\d+)</td>', m.group(1)) == ["1", "0", "0", "0"]


def test_labelling_draws_the_regions_over_the_snapshot_and_lineage_lists_them(cfg: Any) -> None:
    assert jpeg_size(cfg.data_dir / "snapshots" / "boxpet-snap-1.jpg") == (1280, 720)
    c = client_for(cfg)
    sign_in(c, "viewer")
    lab = c.get("/labelling").text
    card = lab[lab.index('data-snapshot="boxpet-snap-1"') :]
    card = card[: card.index("</article>")]
    assert '<svg class="regions" viewBox="0 0 1280 720"' in card
    assert '<rect x="10" y="20" width="300" height="200"' in card and "cat 0.93" in card
    assert "Regions: cat 0.93 at (10,20 300x200)" in card and "day frame" in card
    scaled = lab[lab.index('data-snapshot="boxpet-snap-2"') :]
    scaled = scaled[: scaled.index("</article>")]
    assert "<svg" not in scaled and "not drawn: the box scaled this snapshot down" in scaled
    assert "dog 0.81 at (640,360 128x96)" in scaled
    lin = c.get("/lineage", params={"q": "boxpet:1"}).text
    assert 'id="lineage-result"' in lin
    res = lin[lin.index('id="lineage-result"') :]
    assert "<dt>Regions</dt><dd>cat 0.93 at (10,20 300x200)" in res and "<dt>Lighting</dt><dd>day</dd>" in res


def test_jpeg_size_refuses_what_is_not_a_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0fakejpeg")
    assert jpeg_size(p) is None
    p.write_bytes(b"PNG....")
    assert jpeg_size(p) is None
    assert jpeg_size(tmp_path / "missing.jpg") is None


def test_pages_render_without_a_baseline_and_for_an_analysis_older_than_the_modes(cfg: Any) -> None:
    store = FleetStore(cfg.fleet_store)
    now = time.time()
    run_analysis(cfg, store, None, now=now + 1, baseline_of=lambda v: None)
    c = client_for(cfg)
    sign_in(c, "viewer")
    html = c.get("/quality").text
    assert "no baseline (not judged)" in html and "none share" in html and "(test set" not in html
    # A drift row written before this version: no counts, no modes in its details.
    old = {
        "run_id": "old",
        "ts": now + 2,
        "window_start": now - 3600,
        "window_end": now + 2,
        "model_version": "m1",
        "site": "park1",
        "device": "boxpet",
        "n": 350,
        "drifted": 0,
        "reasons": [],
        "details": {"n": 350, "class_mix": {"cat": 0.5, "dog": 0.5}},
    }
    store.add_drift([old])
    page = c.get("/devices/boxpet")
    assert page.status_code == 200, page.text[:2000]
    assert "This analysis ran before per-lighting-mode figures existed" in page.text
