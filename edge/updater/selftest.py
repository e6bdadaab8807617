"""On-device self-test of a candidate package, in a second ONNX Runtime session.

The candidate is loaded through the daemon's own loader (edge.model.load_model), so what passes
here is exactly what will classify frames. Its golden samples (photos with the probabilities
the cloud measured) must come out within tolerance on this box's runtime, then a few warm-up
runs pay the first-inference cost before the swap, not on a live frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edge.config import InferenceConfig
from edge.errors import ModelError
from edge.model import LoadedModel, load_model
from edge.preprocess import ImageError, load_image
from edge.updater.errors import UpdateError
from shared.modelpkg import GOLDEN_FILE, PackageError, compare_golden, read_golden


@dataclass(frozen=True)
class SelfTestResult:
    samples: int
    max_diff: float
    warmup_ms: float


def load_candidate(pkg_dir: Path, inference: InferenceConfig, expected_version: str) -> LoadedModel:
    try:
        model = load_model(pkg_dir, inference, verification="TUF-verified (approver, pipeline, rollout)")
    except ModelError as e:
        raise UpdateError("self-testing", f"candidate does not load: {e}") from e
    if model.version != expected_version:
        raise UpdateError(
            "verifying", f"package says version {model.version}, the signed release says {expected_version}"
        )
    return model


def run_self_test(model: LoadedModel, pkg_dir: Path, tolerance: float, warmup_runs: int) -> SelfTestResult:
    """Raise :class:`UpdateError` ('self-testing') unless every golden sample matches."""
    try:
        golden = read_golden(pkg_dir)
    except PackageError as e:
        raise UpdateError("self-testing", str(e)) from e
    tol = min(tolerance, golden.tolerance) if tolerance else golden.tolerance
    base = (pkg_dir / GOLDEN_FILE).parent
    worst = 0.0
    for sample in golden.samples:
        path = (base / sample.file).resolve()
        if base.resolve() not in path.parents:
            raise UpdateError("self-testing", f"golden sample path {sample.file!r} leaves the package")
        try:
            img = load_image(path)
            probs = model.classify([img])[0]
            worst = max(worst, compare_golden(sample.probs, [float(p) for p in probs], tol))
        except (ImageError, PackageError) as e:
            raise UpdateError("self-testing", f"golden sample {sample.file}: {e}") from e
        except Exception as e:  # onnxruntime errors are untyped
            raise UpdateError("self-testing", f"golden sample {sample.file}: inference failed: {e}") from e
    t0 = time.perf_counter()
    if warmup_runs:
        img = load_image(base / golden.samples[0].file)
        for _ in range(warmup_runs):
            model.classify([img])
    warm = (time.perf_counter() - t0) * 1000 / max(warmup_runs, 1)
    return SelfTestResult(len(golden.samples), worst, warm)
