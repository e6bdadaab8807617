"""Assemble a model package: ONNX + golden samples + card + lineage + evaluation + manifest + tarball.

Everything is built in a hidden staging folder beside the destination and renamed into place
only when complete, so Ctrl-C or a crash leaves no half-made package (a stale staging folder
is removed by the next build).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from torch import nn

from cloud.evaluation.metrics import summary
from cloud.packaging import export
from cloud.packaging.card import model_card
from cloud.packaging.errors import PackagingError
from edge.preprocess import Preprocessor, load_image
from shared.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from shared.modelpkg import (
    CARD_FILE,
    EVALUATION_HTML,
    EVALUATION_JSON,
    GOLDEN_FILE,
    LINEAGE_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    GoldenSample,
    GoldenSet,
    ModelMetadata,
    build_manifest,
    sha256_file,
)

MIN_GOLDEN = 8
GOLDEN_SHORT_SIDE = 256  # small files for the device, still >= the model's resize target
GOLDEN_TOLERANCE = 1e-3


@dataclass
class PackageSpec:
    metadata: ModelMetadata
    model: nn.Module
    golden: Sequence[tuple[Path, str | None]]
    parity_images: Sequence[Path]
    lineage: dict[str, Any]
    description: str
    metrics: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    evaluation_html: str | None = None
    evaluation_extra: dict[str, Any] = field(default_factory=dict)
    # Called with the exported model.onnx before the card is written; returns
    # (metrics, gate, html, extra). Lets the test step score the very file that ships.
    evaluate: Callable[[Path], tuple[dict[str, Any], dict[str, Any], str, dict[str, Any]]] | None = None


@dataclass
class BuiltPackage:
    version: str
    directory: Path
    tarball: Path
    tarball_sha256: str
    parity_max_abs_diff: float
    lineage: dict[str, Any]


def _small_jpeg(src: Path) -> bytes:
    img = load_image(src)
    h, w = img.shape[:2]
    scale = GOLDEN_SHORT_SIDE / min(h, w)
    small = (
        img
        if scale >= 1
        else cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    )
    ok, enc = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise PackagingError(f"cannot re-encode golden sample {src}")
    return bytes(enc.tobytes())


def batch_from_files(paths: Sequence[Path], pre: Preprocessor) -> npt.NDArray[np.float32]:
    return pre([load_image(p) for p in paths])


def _write_golden(stage: Path, spec: PackageSpec, session: object, pre: Preprocessor) -> None:
    if len(spec.golden) < MIN_GOLDEN:
        raise PackagingError(f"need at least {MIN_GOLDEN} golden samples, got {len(spec.golden)}")
    rels: list[str] = []
    for i, (src, label) in enumerate(spec.golden):
        rel = f"golden/{i:02d}-{label or 'unlabelled'}.jpg"
        atomic_write_bytes(stage / rel, _small_jpeg(src))
        rels.append(rel)
    probs = export.run_onnx(session, batch_from_files([stage / r for r in rels], pre))
    golden = GoldenSet(
        tolerance=GOLDEN_TOLERANCE,
        samples=tuple(
            GoldenSample(file=Path(rel).name, probs=tuple(float(p) for p in row), label=label)
            for rel, row, (_, label) in zip(rels, probs, spec.golden, strict=True)
        ),
    )
    atomic_write_text(stage / GOLDEN_FILE, golden.model_dump_json(indent=2) + "\n")


def deterministic_tarball(src: Path, dest: Path) -> str:
    """A gzip tar of ``src``'s files (paths relative to it), byte-identical for identical contents."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = p.stat().st_size, 0o644
                with p.open("rb") as fh:
                    tar.addfile(info, fh)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as z:
        z.write(raw.getvalue())
    atomic_write_bytes(dest, gz.getvalue(), mode=0o644)
    return sha256_file(dest)


def build_package(
    spec: PackageSpec, out_root: Path, example_shape: tuple[int, ...] | None = None
) -> BuiltPackage:
    """Export, check parity, write every file, manifest them, then move into ``out_root/<version>``."""
    import torch

    version = spec.metadata.model_version
    final = out_root / version
    tarball = out_root / f"{version}.tar.gz"
    if final.exists() or tarball.exists():
        raise PackagingError(f"{final} already exists; model versions are immutable")
    out_root.mkdir(parents=True, exist_ok=True)
    stage = out_root / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        pre = Preprocessor(spec.metadata.preprocess)
        parity_batch = batch_from_files(list(spec.parity_images), pre)
        export.export_onnx(
            spec.model,
            stage / MODEL_FILE,
            spec.metadata,
            torch.from_numpy(parity_batch[:2]) if example_shape is None else torch.zeros(example_shape),
        )
        diff = export.parity(spec.model, stage / MODEL_FILE, parity_batch)
        lineage = {
            **spec.lineage,
            "model_version": version,
            "parity": {
                "max_abs_diff": diff,
                "tolerance": export.PARITY_TOLERANCE,
                "images": len(parity_batch),
                "opset": export.OPSET,
            },
        }
        if spec.evaluate is not None:
            spec.metrics, spec.gate, spec.evaluation_html, extra = spec.evaluate(stage / MODEL_FILE)
            spec.evaluation_extra = {**spec.evaluation_extra, **extra}
            lineage["metrics"], lineage["gate"] = summary(spec.metrics), spec.gate
        session = export.ort_session(stage / MODEL_FILE)
        _write_golden(stage, spec, session, pre)
        atomic_write_json(stage / LINEAGE_FILE, lineage)
        if spec.metrics is not None:
            atomic_write_json(
                stage / EVALUATION_JSON,
                {
                    **spec.evaluation_extra,
                    "metrics": spec.metrics,
                    "gate": spec.gate,
                    "model_version": version,
                },
            )
        if spec.evaluation_html is not None:
            atomic_write_text(stage / EVALUATION_HTML, spec.evaluation_html)
        atomic_write_text(
            stage / CARD_FILE, model_card(spec.metadata, lineage, spec.metrics, spec.gate, spec.description)
        )
        for p in stage.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)  # mkstemp makes 0600; devices read as another user
        manifest = build_manifest(stage, version)
        atomic_write_text(stage / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n", mode=0o644)
        tmp_tar = out_root / f".staging-{version}-{os.getpid()}.tar.gz"
        digest = deterministic_tarball(stage, tmp_tar)
        os.replace(stage, final)
        os.replace(tmp_tar, tarball)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for p in out_root.glob(f".staging-{version}-{os.getpid()}*"):
            p.unlink(missing_ok=True)
        raise
    return BuiltPackage(version, final, tarball, digest, diff, lineage)


def read_lineage(package_dir: Path) -> dict[str, Any]:
    return dict(json.loads((package_dir / LINEAGE_FILE).read_text(encoding="utf-8")))
