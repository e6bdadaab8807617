"""Issue 3 benchmark: training-step images/s against a bare forward/backward loop of the same model.

- bare:  EfficientNet-Lite0 forward + backward + SGD step on random 224x224 batches: what every
         image of every epoch of every trial would cost if the search fine-tuned end to end.
- ours:  (a) feature extraction, once per image view: decode + augment + ``edge.preprocess`` +
         backbone forward (no backward), written to the feature cache;
         (b) a search trial's training step: the head on cached features.
The headline ratio is ours (b) against bare, per image seen by a training step; (a) against a
bare forward-only loop shows what decoding and preprocessing cost on top of the network.

    .venv/bin/python bench/train.py [--batch 16] [--images 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cloud.training.backbone import FEATURE_DIM, PREPROCESS, Classifier, load_backbone, make_head  # noqa: E402
from cloud.training.features import FeatureStore  # noqa: E402
from cloud.training.head import HeadParams, train_head  # noqa: E402
from shared.paths import sample_lake  # noqa: E402

TARGET = 10.0  # the cached search must be at least 10x faster per training image than fine-tuning


def bare_fwd_bwd(batch: int, steps: int) -> float:
    model = Classifier(load_backbone(), make_head(0, 0.0)).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    loss_fn = torch.nn.NLLLoss()
    opt.zero_grad()
    loss_fn(torch.log(model(x)), y).backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(torch.log(model(x) + 1e-9), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def bare_forward(batch: int, steps: int) -> float:
    model = load_backbone().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model.extract_features(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.extract_features(x)
    return batch * steps / (time.perf_counter() - t0)


def feature_extraction(images: int, batch: int) -> float:
    files = sorted(sample_lake().rglob("*.jpg"))[:: max(1, 1802 // images)][:images]
    import hashlib

    items = [(hashlib.sha256(p.read_bytes()).hexdigest(), p) for p in files]
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp), PREPROCESS, seed=1, batch_size=batch)
        jobs = [(sha, p, v) for sha, p in items for v in (0, 1)]
        store.compute(jobs[:batch])  # warm-up: model load
        jobs = jobs[batch:]
        t0 = time.perf_counter()
        store.compute(jobs)
        return len(jobs) / (time.perf_counter() - t0)


def head_steps(n: int = 4400, epochs: int = 5) -> float:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, FEATURE_DIM)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.int64)
    params = HeadParams(lr=3e-3, weight_decay=1e-4, epochs=epochs, label_smoothing=0.0, dropout=0.2)
    t0 = time.perf_counter()
    train_head(x, y, params, seed=0, n_classes=2)
    return n * epochs / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    bare = bare_fwd_bwd(args.batch, args.steps)
    fwd = bare_forward(args.batch, args.steps)
    feat = feature_extraction(args.images, args.batch)
    head = head_steps()
    r: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "bare_forward_backward_img_per_s": round(bare, 1),
        "bare_forward_img_per_s": round(fwd, 1),
        "feature_extraction_img_per_s": round(feat, 1),
        "head_training_step_img_per_s": round(head, 1),
        "ratio_training_step_vs_bare": round(head / bare, 1),
        "ratio_feature_extraction_vs_bare_forward": round(feat / fwd, 3),
        "target": TARGET,
        "ok": head / bare >= TARGET,
    }
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"bare forward+backward (full network): {bare:>10.1f} img/s")
        print(f"bare forward only (backbone):         {fwd:>10.1f} img/s")
        print(
            f"feature extraction (decode+aug+fwd):  {feat:>10.1f} img/s  "
            f"({r['ratio_feature_extraction_vs_bare_forward']:.2f} of bare forward)"
        )
        print(f"training step on cached features:     {head:>10.1f} img/s")
        print(
            f"ratio {r['ratio_training_step_vs_bare']:.0f}x (target >= {TARGET:.0f}x) "
            f"{'OK' if r['ok'] else 'BELOW TARGET'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
