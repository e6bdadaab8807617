"""`make demo` runs `parkwatch cloud demo`: the main job must really bring predictions into the
cloud store. This runs it for real (broker, cloud serve, edge daemon), without the training part
that test_train_full.py covers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PARKWATCH = str(Path(sys.executable).parent / "parkwatch")


@pytest.mark.slow
def test_demo_stores_predictions_and_prints_where_to_look(tmp_path: Path, pets_sample: Path) -> None:
    res = subprocess.run(
        [PARKWATCH, "cloud", "demo", "--workdir", str(tmp_path / "demo"), "--no-train", "--duration", "60"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert re.search(r"dashboard\s+http://127\.0\.0\.1:\d+/\s+login demo / \S+", out), out
    assert re.search(r"status page http://127\.0\.0\.1:\d+/\?token=\S+", out), out
    stored = [int(m) for m in re.findall(r"cloud store (\d+) predictions", out)]
    assert stored and stored[-1] > 0 and stored == sorted(stored), out
    final = re.search(r"demo stopped: (\d+) predictions stored", out)
    assert final and int(final.group(1)) == stored[-1], out
    # the camera shows wide scenes built at start (outside the repository), with and without pets
    # and a night stretch, so the cloud stores none as well as cat and dog
    import cv2

    from cloud.fleet.store import FleetStore

    scenes = sorted((tmp_path / "demo" / "camera").glob("*.jpg"))
    assert any("night" in p.name for p in scenes) and any(p.name.endswith("-none.jpg") for p in scenes)
    frame = cv2.imread(str(scenes[0]))
    assert frame is not None and frame.shape[:2] == (720, 1280)
    assert (tmp_path / "demo" / "lake" / "none").is_symlink()
    with FleetStore(tmp_path / "demo" / "cloud" / "fleet.db") as store:
        labels = {r["label"] for r in store.query("SELECT DISTINCT label FROM predictions")}
    assert {"cat", "dog", "none"} <= labels, labels
    # everything was shut down: no daemon or broker of this demo is left behind
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"left running: {left.stdout}"
