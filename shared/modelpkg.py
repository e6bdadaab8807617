"""The model package format, shared by the cloud (which writes it) and the edge (which runs it).

A package is a directory (shipped also as a tarball)::

    model.onnx        probabilities out (softmax inside the graph), dynamic batch,
                      metadata_props: parkwatch.labels, parkwatch.preprocess, parkwatch.model_version
    manifest.json     {"format": 1, "model_version": ..., "files": {relpath: {"sha256", "size"}}}
    golden/golden.json + golden/*.jpg   samples with expected probabilities for the on-device self-test
    model_card.md, lineage.json, evaluation.json, evaluation.html

The ONNX metadata alone is enough to run the model, so any ONNX Runtime user can; the rest is
for people and for verification. Everything here is pure (no file I/O) except the small
``read_*`` helpers at the bottom, so verification can be tested without a disk.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.config import dotted
from shared.errors import ParkwatchError

FORMAT_VERSION: Literal[1] = 1
META_LABELS = "parkwatch.labels"
META_PREPROCESS = "parkwatch.preprocess"
META_VERSION = "parkwatch.model_version"
META_REJECTION = "parkwatch.rejection"  # optional: how the model says "no pet" (RejectionSpec)
REQUIRED_META = (META_LABELS, META_PREPROCESS, META_VERSION)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "golden/golden.json"
LINEAGE_FILE = "lineage.json"
CARD_FILE = "model_card.md"
EVALUATION_JSON = "evaluation.json"
EVALUATION_HTML = "evaluation.html"

ABSTAIN = "abstain"
NONE_LABEL = "none"
PET_SCORE_OUTPUT = "pet_score"
MAX_FIGURES = 32


class PackageError(ParkwatchError):
    """A model package or ONNX file is unusable; the message says which part and why."""


class MissingMetadata(PackageError):
    pass


class DigestMismatch(PackageError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Finite = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]


class PreprocessSpec(_Strict):
    """Exactly how pixels become the model input; training and edge both obey it.

    Steps, in order: BGR decode → colour order → resize (``shorter_side`` to ``resize_to`` keeping
    aspect, or ``stretch`` to ``input_size``) → crop (``center`` to ``input_size`` or ``none``) →
    float32 ``x * scale`` → ``(x - mean) / std`` per channel → ``layout``.
    """

    # Bounded: the metadata comes from a package file, and a side of 0 or 100000 would crash or
    # exhaust a box on the first frame instead of being refused at load.
    input_size: tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]] = Field(
        (224, 224), description="height, width"
    )
    resize: Literal["shorter_side", "stretch"] = "shorter_side"
    resize_to: int = Field(256, ge=8, le=4096, description="shorter side after resize (shorter_side only)")
    crop: Literal["center", "none"] = "center"
    interpolation: Literal["area", "linear", "cubic"] = "linear"
    colour: Literal["RGB", "BGR"] = "RGB"
    scale: float = Field(1.0 / 255.0, gt=0, le=1.0, allow_inf_nan=False)
    mean: tuple[Finite, Finite, Finite] = (0.485, 0.456, 0.406)
    std: tuple[Finite, Finite, Finite] = (0.229, 0.224, 0.225)
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


class RejectionSpec(_Strict):
    """How a package says "no pet here" (``parkwatch.rejection``); absent in older packages.

    A region's *pet evidence* combines the signals the package has: the backbone's own ImageNet
    pet score (output ``score_output``) and the trained head's ``1 - P(none_label)``.

    - ``evidence = "geometric"`` (packages before ``pet-evidence-v2``): their geometric mean.
    - ``evidence = "logit"``: a weighted sum of their log-odds, ``score_weight`` on the ImageNet
      score, brought back to [0, 1]. Why: a head trained on ``none`` photos separates empty
      tiles from pets far better than ImageNet's pet classes do, yet ImageNet's 1.2 M photos
      know kinds of non-pet (people, cars) that a few hundred ``none`` photos may lack, so the
      score keeps a weight chosen on validation frames. Log-odds keep a sure head's evidence
      apart (0.999 vs 0.99), which a geometric mean of probabilities squashes together.
    - ``full_score_weight``: the ImageNet share for the whole-frame view alone (``score_weight``
      when absent, as in packages before it). Why apart: ImageNet's classes were learnt on whole
      photos, so on a whole view they are the surer judge of "no pet" (a jeep or a hammer that a
      head trained on a few hundred ``none`` photos calls a pet at 0.99 scores 0.0002-0.06 as a
      pet in ImageNet), while on the small tiles of a wide frame the head trained on scene tiles
      is the better one.

    ``threshold`` applies to a photo's whole-frame view, ``region_threshold`` to the
    tiles/motion/zone regions of a wide frame (there are many of them per frame, so it is
    stricter). Both are chosen on validation data only.
    """

    none_label: str | None = Field(None, min_length=1, max_length=32)
    score_output: Literal["pet_score"] | None = None
    threshold: float | None = Field(None, ge=0, le=1)
    region_threshold: float | None = Field(None, ge=0, le=1)
    evidence: Literal["geometric", "logit"] = "geometric"
    score_weight: float = Field(0.5, ge=0, le=1, description="share of the ImageNet score (logit evidence)")
    full_score_weight: float | None = Field(
        None, ge=0, le=1, description="the same for the whole-frame view; score_weight when absent"
    )
    method: str = Field("pet-evidence-v1", min_length=1, max_length=64)
    chosen_on: Literal["validation", "default"] = "default"
    figures: dict[str, float] = Field(default_factory=dict, max_length=MAX_FIGURES)

    @field_validator("figures")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if len(k) > 64 or not math.isfinite(x):
                raise ValueError(f"figure {k[:64]!r}: names up to 64 characters, finite values only")
        return v

    def weight(self, full: bool) -> float:
        """The ImageNet score's share in the evidence of a whole-frame view or of a region."""
        if full and self.full_score_weight is not None:
            return self.full_score_weight
        return self.score_weight

    @property
    def active(self) -> bool:
        """Whether the package can reject at all (a signal and a threshold)."""
        return self.threshold is not None and (self.score_output is not None or self.none_label is not None)


class ModelMetadata(_Strict):
    labels: tuple[str, ...] = Field(min_length=2)
    preprocess: PreprocessSpec
    model_version: str = Field(min_length=1)
    rejection: RejectionSpec | None = None

    @model_validator(mode="after")
    def _none_label_known(self) -> ModelMetadata:
        rej = self.rejection
        if rej is not None and rej.none_label is not None and rej.none_label not in self.labels:
            raise ValueError(f"rejection.none_label {rej.none_label!r} is not one of the labels")
        if rej is not None and len([lab for lab in self.labels if lab != rej.none_label]) < 1:
            raise ValueError("a model needs at least one pet label besides the none label")
        return self

    @property
    def pet_labels(self) -> tuple[str, ...]:
        none = self.rejection.none_label if self.rejection else None
        return tuple(lab for lab in self.labels if lab != none)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` strings written into the ONNX file."""
        props = {
            META_LABELS: json.dumps(list(self.labels)),
            META_PREPROCESS: self.preprocess.model_dump_json(),
            META_VERSION: self.model_version,
        }
        if self.rejection is not None:
            props[META_REJECTION] = self.rejection.model_dump_json()
        return props


def parse_metadata(props: Mapping[str, str], source: str = "model") -> ModelMetadata:
    """Validate ONNX ``metadata_props``; refuses a model that cannot say how to feed it."""
    missing = [k for k in REQUIRED_META if k not in props]
    if missing:
        raise MissingMetadata(
            f"{source}: ONNX metadata lacks {', '.join(missing)}; only models packaged by "
            "'parkwatch cloud train' (or with those metadata_props) can run on the edge"
        )
    try:
        labels = json.loads(props[META_LABELS])
        preprocess = json.loads(props[META_PREPROCESS])
        if ABSTAIN in labels:
            raise ValueError(f"'{ABSTAIN}' is reserved and cannot be a label")
        rejection = json.loads(props[META_REJECTION]) if META_REJECTION in props else None
        return ModelMetadata(
            labels=labels, preprocess=preprocess, model_version=props[META_VERSION], rejection=rejection
        )
    except ValidationError as e:
        problems = "; ".join(f"{dotted(err['loc'])}: {err['msg']}" for err in e.errors())
        if any(err["type"] == "extra_forbidden" for err in e.errors()):
            hint = "the package was built by newer parkwatch code than this runs: update this side first"
        else:
            hint = "use a package built by 'parkwatch cloud train'"
        raise MissingMetadata(f"{source}: invalid parkwatch metadata ({problems}); {hint}") from e
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise MissingMetadata(
            f"{source}: invalid parkwatch metadata: {e}; use a package built by 'parkwatch cloud train'"
        ) from e


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(_Strict):
    format: Literal[1] = FORMAT_VERSION
    model_version: str
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in v:
            p = Path(rel)
            if p.is_absolute() or ".." in p.parts or rel != p.as_posix():
                raise ValueError(f"unsafe path in manifest: {rel!r}")
        if MODEL_FILE not in v:
            raise ValueError(f"manifest does not list {MODEL_FILE}")
        return v


class GoldenSample(_Strict):
    file: str
    probs: tuple[float, ...]
    label: str | None = None


class GoldenSet(_Strict):
    tolerance: float = Field(1e-3, gt=0)
    samples: tuple[GoldenSample, ...] = Field(min_length=1)


def check_digests(manifest: Manifest, actual: Mapping[str, FileEntry]) -> None:
    """Pure check that files on hand match the manifest exactly (no missing, none extra)."""
    missing = sorted(set(manifest.files) - set(actual))
    extra = sorted(set(actual) - set(manifest.files))
    if missing:
        raise DigestMismatch(f"package is missing {', '.join(missing)}")
    if extra:
        raise DigestMismatch(f"package has files the manifest does not list: {', '.join(extra)}")
    bad = [rel for rel, e in manifest.files.items() if actual[rel] != e]
    if bad:
        raise DigestMismatch(f"digest or size mismatch for {', '.join(sorted(bad))}")


def compare_golden(expected: tuple[float, ...], got: list[float], tolerance: float) -> float:
    """Largest absolute difference; raises if beyond ``tolerance``."""
    if len(expected) != len(got):
        raise PackageError(f"golden sample has {len(expected)} outputs, model gave {len(got)}")
    diff = max(abs(a - b) for a, b in zip(expected, got, strict=True))
    if diff > tolerance:
        raise PackageError(f"golden sample differs by {diff:.2e} (tolerance {tolerance:.1e})")
    return diff


# ---- small I/O helpers -------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def scan_files(root: Path) -> dict[str, FileEntry]:
    """Digest every regular file under ``root`` except the manifest itself."""
    out: dict[str, FileEntry] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise PackageError(f"{p}: symlinks are not allowed in a model package")
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST_FILE:
                out[rel] = FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
    return out


def build_manifest(root: Path, model_version: str) -> Manifest:
    return Manifest(model_version=model_version, files=scan_files(root))


def read_manifest(root: Path) -> Manifest:
    try:
        return Manifest.model_validate_json((root / MANIFEST_FILE).read_bytes())
    except FileNotFoundError as e:
        raise PackageError(f"{root}: no {MANIFEST_FILE}; not a parkwatch model package") from e
    except ValidationError as e:
        raise PackageError(f"{root}/{MANIFEST_FILE}: invalid manifest: {e.errors()[0]['msg']}") from e


def verify_package(root: Path) -> Manifest:
    """Check every file of a package directory against its manifest."""
    manifest = read_manifest(root)
    check_digests(manifest, scan_files(root))
    return manifest


def read_golden(root: Path) -> GoldenSet:
    try:
        return GoldenSet.model_validate_json((root / GOLDEN_FILE).read_bytes())
    except FileNotFoundError as e:
        raise PackageError(f"{root}: no {GOLDEN_FILE}; the package cannot be self-tested") from e
    except ValidationError as e:
        raise PackageError(f"{root}/{GOLDEN_FILE}: invalid: {e.errors()[0]['msg']}") from e


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
