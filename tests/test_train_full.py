"""The whole sample: trained accuracy >= 0.98, clearly above the untrained baseline, and a plain
onnxruntime script that knows nothing of parkwatch reproduces the reported accuracy exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud

# Only onnxruntime, numpy, OpenCV and the ONNX file's own metadata: no parkwatch import.
PLAIN_SCRIPT = r"""
import json, sys
import cv2, numpy as np, onnxruntime as ort

model, listing = sys.argv[1], sys.argv[2]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
labels = json.loads(meta["parkwatch.labels"])
spec = json.loads(meta["parkwatch.preprocess"])
interp = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[spec["interpolation"]]
oh, ow = spec["input_size"]

def prep(path):
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    if spec["resize"] == "stretch":
        img = cv2.resize(img, (ow, oh), interpolation=interp)
    else:
        s = spec["resize_to"] / min(h, w)
        img = cv2.resize(img, (max(ow, round(w * s)), max(oh, round(h * s))), interpolation=interp)
    if spec["crop"] == "center":
        h, w = img.shape[:2]
        t, l = (h - oh) // 2, (w - ow) // 2
        img = img[t:t + oh, l:l + ow]
    if spec["colour"] == "RGB":
        img = img[..., ::-1]
    x = img.astype(np.float32) * np.float32(spec["scale"])
    x = (x - np.float32(spec["mean"])) / np.float32(spec["std"])
    return x.transpose(2, 0, 1) if spec["layout"] == "NCHW" else x

items = [json.loads(line) for line in open(listing)]
correct = 0
for i in range(0, len(items), 32):
    chunk = items[i:i + 32]
    probs = sess.run(None, {sess.get_inputs()[0].name: np.stack([prep(it["path"]) for it in chunk])})[0]
    correct += sum(labels[int(np.argmax(p))] == it["label"] for p, it in zip(probs, chunk))
print(json.dumps({"correct": correct, "n": len(items), "accuracy": correct / len(items)}))
"""


def plain_accuracy(model: Path, listing: Path, tmp_path: Path) -> dict:
    script = tmp_path / "plain_eval.py"
    script.write_text(PLAIN_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(model), str(listing)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_full_sample_training_beats_baseline_and_reproduces_with_plain_onnxruntime(
    tmp_path: Path, pets_sample: Path, baseline_package: Path
) -> None:
    cache = Path(
        os.environ.get("PARKWATCH_TEST_CACHE") or Path(__file__).parent.parent / ".cache" / "test-models"
    )
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[train]\nfeature_cache_dir = "{cache / "features"}"\n')
    runner = CliRunner()
    res = runner.invoke(cloud, ["ingest", str(pets_sample), "--config", str(cfg), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = json.loads(res.output)
    res = runner.invoke(
        cloud, ["train", "--dataset", ds["dataset_version"], "--config", str(cfg), "--json", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    trained = json.loads(res.output)
    assert trained["metrics"]["accuracy"] >= 0.98 and trained["gate_passed"]

    root = Path(ds["source"])
    listing = tmp_path / "test-split.jsonl"
    lines = [json.loads(x) for x in Path(ds["manifest"]).read_text().splitlines()]
    listing.write_text(
        "".join(
            json.dumps({"path": str(root / ln["path"]), "label": ln["label"]}) + "\n"
            for ln in lines
            if ln["split"] == "test"
        )
    )
    plain = plain_accuracy(Path(trained["package"]) / "model.onnx", listing, tmp_path)
    assert plain["n"] == trained["metrics"]["n"]
    assert plain["accuracy"] == trained["metrics"]["accuracy"]  # exactly, not approximately

    baseline = plain_accuracy(baseline_package / "model.onnx", listing, tmp_path)
    assert trained["metrics"]["accuracy"] >= baseline["accuracy"] + 0.02
