"""Loading a model into ONNX Runtime, and the slot that holds the one classifying frames.

Contract (the updater loads candidates through the same function)::

    load_model(path, inference: InferenceConfig | None = None, *, verification: str | None = None)
        -> LoadedModel
    LoadedModel.run(batch) -> probabilities (N, labels); run_full(batch) -> ModelOutput
    ModelSlot.current -> LoadedModel | None
    ModelSlot.swap(new: LoadedModel) -> LoadedModel | None      # returns the one replaced
    ModelSlot.previous -> LoadedModel | None                     # kept for rollback
    ModelSlot.rollback() -> LoadedModel                          # previous becomes current

``path`` is a model package directory (``model.onnx`` + ``manifest.json``; the manifest's
digests are checked) or a bare ``.onnx`` file. Either way the ONNX ``metadata_props`` must carry
``parkwatch.labels``, ``parkwatch.preprocess`` and ``parkwatch.model_version``; without them
:class:`~edge.errors.ModelMetadataError` is raised, because guessing the preprocessing would
classify garbage with confidence.

Why a slot: the inference loop reads ``slot.current`` once per batch and uses that object for
the whole batch, so a swap lands between two inferences and never mixes two models in a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge.config import InferenceConfig
from edge.errors import ModelLoadError, ModelMetadataError
from edge.preprocess import Preprocessor
from shared.modelpkg import (
    MANIFEST_FILE,
    MODEL_FILE,
    MissingMetadata,
    ModelMetadata,
    PackageError,
    PreprocessSpec,
    parse_metadata,
    verify_package,
)

log = logging.getLogger("parkwatch.edge.model")

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelOutput:
    """Everything one ``session.run`` gives: class probabilities and, if the package has it, the
    backbone's ImageNet pet score per row (see ``shared.modelpkg.RejectionSpec``)."""

    probs: F32  # (N, len(labels))
    pet_score: F32 | None  # (N,) in [0, 1], or None for packages without that output


@dataclass
class LoadedModel:
    version: str
    labels: tuple[str, ...]
    spec: PreprocessSpec
    metadata: ModelMetadata
    session: ort.InferenceSession
    onnx_path: Path
    package_dir: Path | None
    providers: list[str]
    threads: int
    input_name: str
    max_batch: int | None  # None = dynamic batch dimension
    verification: str  # human words for the status page: how we know this model is genuine
    score_output: str | None = None  # name of the pet-score output, when the graph has one
    preprocessor: Preprocessor = field(init=False)
    loaded_ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.preprocessor = Preprocessor(self.spec)

    def run(self, batch: F32) -> F32:
        """Class probabilities for a preprocessed batch, shape (N, len(labels))."""
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            parts = [
                self.run(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)
            ]
            return np.concatenate(parts)
        out = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)

    def run_full(self, batch: F32) -> ModelOutput:
        """Probabilities and the pet score (when the graph has it) from one ``session.run``."""
        n = batch.shape[0]
        if self.max_batch is not None and n > self.max_batch:
            parts = [self.run_full(batch[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
            scores = [p.pet_score for p in parts]
            return ModelOutput(
                np.concatenate([p.probs for p in parts]),
                None if any(s is None for s in scores) else np.concatenate(scores),  # type: ignore[arg-type]
            )
        outs = self.session.run(None, {self.input_name: batch})
        probs = np.asarray(outs[0], dtype=np.float32).reshape(n, -1)
        score = None
        if self.score_output is not None:
            names = [o.name for o in self.session.get_outputs()]
            score = np.asarray(outs[names.index(self.score_output)], dtype=np.float32).reshape(n)
        return ModelOutput(probs, score)

    def classify(self, frames: list[npt.NDArray[np.uint8]]) -> F32:
        return self.run(self.preprocessor(frames))

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "labels": list(self.labels),
            "path": str(self.package_dir or self.onnx_path),
            "providers": self.providers,
            "threads": self.threads,
            "verification": self.verification,
            "loaded_ts": self.loaded_ts,
        }


def _providers(wanted: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        log.warning(
            "execution provider(s) %s not available here (have %s); falling back",
            ", ".join(missing),
            ", ".join(sorted(available)),
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _session(onnx_path: Path, threads: int, providers: list[str]) -> tuple[ort.InferenceSession, list[str]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle ORT threads would otherwise spin after every run and steal the cores the camera
    # readers and the publisher need between two inferences.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors
        if providers != ["CPUExecutionProvider"]:
            log.warning("session with %s failed (%s); retrying on CPU only", providers, e)
            return _session(onnx_path, threads, ["CPUExecutionProvider"])
        raise ModelLoadError(
            f"{onnx_path}: ONNX Runtime cannot load this model ({e}); pass a model package folder "
            "(or its model.onnx) as built by parkwatch cloud train"
        ) from e
    return sess, list(sess.get_providers())


def load_model(
    path: str | Path,
    inference: InferenceConfig | None = None,
    *,
    verification: str | None = None,
) -> LoadedModel:
    """Load ``path`` (package dir or .onnx) into a ready session; raises a :class:`ModelError`."""
    inference = inference or InferenceConfig()
    p = Path(path)
    package_dir: Path | None = None
    how = verification
    if p.is_dir():
        package_dir = p
        onnx_path = p / MODEL_FILE
        if not onnx_path.is_file():
            raise ModelLoadError(f"{p}: no {MODEL_FILE} in this folder; is it a parkwatch model package?")
        if (p / MANIFEST_FILE).is_file():
            try:
                manifest = verify_package(p)
            except PackageError as e:
                raise ModelLoadError(f"{p}: package fails its manifest check: {e}") from e
            how = how or f"manifest digests ok ({len(manifest.files)} files)"
        else:
            how = how or "no manifest: unverified folder"
    elif p.is_file():
        onnx_path = p
        how = how or "bare .onnx: unverified"
    else:
        raise ModelLoadError(f"{p}: no such model file or package folder")
    sess, used = _session(onnx_path, inference.effective_threads, _providers(list(inference.providers)))
    props = dict(sess.get_modelmeta().custom_metadata_map)
    try:
        meta = parse_metadata(props, str(onnx_path))
    except MissingMetadata as e:
        raise ModelMetadataError(str(e)) from e
    inp = sess.get_inputs()[0]
    outs = sess.get_outputs()
    first_dim = inp.shape[0] if inp.shape else None
    max_batch = first_dim if isinstance(first_dim, int) and first_dim > 0 else None
    n_out = outs[0].shape[-1] if outs and outs[0].shape else None
    if isinstance(n_out, int) and n_out != len(meta.labels):
        raise ModelMetadataError(
            f"{onnx_path}: the model outputs {n_out} classes but its metadata lists "
            f"{len(meta.labels)} labels; repackage it"
        )
    score_output = None
    rej = meta.rejection
    if rej is not None and rej.score_output is not None:
        if rej.score_output not in [o.name for o in outs]:
            raise ModelMetadataError(
                f"{onnx_path}: the metadata names a {rej.score_output!r} output the graph does not have; "
                "repackage it"
            )
        score_output = rej.score_output
    return LoadedModel(
        score_output=score_output,
        version=meta.model_version,
        labels=meta.labels,
        spec=meta.preprocess,
        metadata=meta,
        session=sess,
        onnx_path=onnx_path,
        package_dir=package_dir,
        providers=used,
        threads=inference.effective_threads,
        input_name=inp.name,
        max_batch=max_batch,
        verification=how or "unknown",
    )


class ModelSlot:
    """Holds the active model and the one before it; swaps are atomic for readers."""

    def __init__(self, model: LoadedModel | None = None) -> None:
        self._lock = threading.Lock()
        self._current = model
        self._previous: LoadedModel | None = None
        self.swaps = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def previous(self) -> LoadedModel | None:
        return self._previous

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old = self._current
            self._current = new
            if old is not None:
                self._previous = old
            self.swaps += 1
        log.info("model %s is now active (was %s)", new.version, old.version if old else "none")
        return old

    def rollback(self) -> LoadedModel:
        with self._lock:
            if self._previous is None:
                raise ModelLoadError("no previous model to roll back to")
            self._current, self._previous = self._previous, self._current
            self.swaps += 1
            assert self._current is not None
            log.info("rolled back to model %s", self._current.version)
            return self._current
