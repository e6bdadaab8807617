"""Regenerate the screenshots in docs/img: a small fleet with health reasons, drift, alerts and
snapshots, shown in Debian's Chromium. Run: ``.venv/bin/python -m tests.doc_screenshots``."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.governance.rules import Finding
from tests.browserutil import ARGS, CHROMIUM, live_dashboard, sign_in
from tests.dashutil import make_cfg, seed_fleet, seed_users, write_snapshot_jpeg


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    cfg = make_cfg(tmp, fleet={"heartbeat_timeout_s": 600}, dashboard={"snapshot_sites": ["park1"]})
    seed_users(cfg)
    seed_fleet(cfg, devices=8, hours=6, step_s=120, predictions=30, offline=(5,), hot=(2,))
    fs = FleetStore(cfg.paths.fleet_db)
    for d in fs.devices():
        fs.set_health(d.device, "ok", [], time.time())
    fs.set_health("box0002", "critical", ["temperature 85 °C above the 80 °C limit"], time.time())
    fs.set_health("box0005", "offline", ["box0005 reported offline (last-will)"], time.time())
    fs.set_health("box0003", "degraded", ["camera cam2 stalled for 40 s"], time.time())
    now = time.time()
    rows = []
    for k in range(6):
        ts = now - (5 - k) * 3600
        rows.append(
            {
                "run_id": f"r{k}",
                "ts": ts,
                "window_start": ts - 3600,
                "window_end": ts,
                "model_version": "m1",
                "site": "park1",
                "device": "",
                "n": 1200,
                "psi": 0.03 + 0.05 * k,
                "js": 0.02 + 0.025 * k,
                "ks": 0.05,
                "ks_p": 0.2,
                "wasserstein": 0.01,
                "abstain_rate": 0.04,
                "flag_rate": 0.01,
                "est_accuracy": 0.95,
                "accuracy": None,
                "n_labels": 0,
                "recall_gap": None,
                "drifted": int(k >= 4),
                "reasons": ["class mix cat 71%/dog 29% vs baseline cat 50%/dog 50% (PSI 0.230, JS 0.120)"]
                if k >= 4
                else [],
                "details": {
                    "class_mix": {"cat": 0.5 + 0.04 * k, "dog": 0.5 - 0.04 * k},
                    "baseline": {"class_mix": {"cat": 0.5, "dog": 0.5}},
                },
            }
        )
    fs.add_drift(rows)
    al = AlertStore(cfg.paths.fleet_db)
    al.raise_finding(
        Finding("overheating", "park1", "box0002 at 85 °C (limit 80 °C)", device="box0002"),
        "critical",
        "analysis",
    )
    al.raise_finding(
        Finding("device_offline", "park2", "box0005 reported offline (last-will)", device="box0005"),
        "warning",
        "analysis",
    )
    al.raise_finding(
        Finding(
            "class_mix_drift",
            "park1",
            "class mix cat 71%/dog 29% vs baseline cat 50%/dog 50% (PSI 0.230)",
            subject="model:m1",
        ),
        "warning",
        "analysis",
    )
    for j, dev in enumerate(("box0000", "box0002", "box0004")):
        for i in (1, 6, 11, 16):
            write_snapshot_jpeg(
                cfg, f"{dev}-snap-{i}", colour=(60 + 25 * (i % 4), 90 + 30 * j, 150 - 20 * (i % 3))
            )
    out = Path(__file__).resolve().parent.parent / "docs" / "img"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        with live_dashboard(cfg) as base:
            ctx = b.new_context(
                viewport={"width": 1280, "height": 760}, timezone_id="Europe/Madrid", locale="en-GB"
            )
            page = ctx.new_page()
            sign_in(page, base, "engineer")
            for path, name, full in (
                ("/", "fleet", False),
                ("/devices/box0002?window=6h", "device", False),
                ("/quality", "quality", False),
                ("/alerts", "alerts", False),
                ("/labelling", "labelling", False),
            ):
                page.goto(base + path)
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / f"dashboard-{name}.png"), full_page=full)
            ctx.close()
        b.close()
    shutil.rmtree(tmp)
    for png in out.glob("dashboard-*.png"):
        Image.open(png).convert("RGB").quantize(
            colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        ).save(png, optimize=True)
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main()
