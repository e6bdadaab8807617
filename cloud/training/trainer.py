"""``parkwatch cloud train``: features → search → retrain best → test → package → register.

Nothing is registered until the package is complete and scored; an interrupted or failed run
is recorded as such (with every finished trial), and its half-built package folder is removed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.config import CloudConfig
from cloud.evaluation.runner import evaluate_onnx
from cloud.evaluation.scenes import build_specs, render
from cloud.packaging.lineage import base_lineage
from cloud.packaging.package import PackageSpec, build_package
from cloud.registry.models import ModelRecord, TrialRecord
from cloud.registry.store import Registry
from cloud.training import search
from cloud.training.backbone import FEATURE_DIM, PREPROCESS, Classifier, load_backbone, pet_score_np
from cloud.training.data import Item, RunData, load_run_data
from cloud.training.errors import TrainingInterrupted
from cloud.training.features import FeatureStore, pick_device, pick_engine
from cloud.training.head import (
    HeadParams,
    apply_temperature,
    fit_temperature,
    log_loss,
    logits,
    predict_proba,
    train_head,
)
from cloud.training.rejection import (
    RegionSource,
    choose_thresholds,
    frame_features,
    second_look_features,
    signals,
)
from cloud.training.scenetiles import scene_rows
from edge.config import InferenceConfig
from edge.perception.config import RegionsConfig
from edge.preprocess import load_image
from shared.modelpkg import NONE_LABEL, PET_SCORE_OUTPUT, ModelMetadata, RejectionSpec

log = logging.getLogger("parkwatch.cloud.train")

GOLDEN_PER_LABEL = 4
PARITY_IMAGES = 16


@dataclass
class TrainOptions:
    dataset_id: str
    search: str | None = None
    trials: int | None = None
    seed: int | None = None
    show_progress: bool = True
    version: str | None = None


@dataclass
class TrainResult:
    model_version: str
    run_id: str
    package: Path
    tarball: Path
    metrics: dict[str, Any]
    gate: dict[str, Any]
    best_params: dict[str, Any]
    trials: list[dict[str, Any]]
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "run_id": self.run_id,
            "package": str(self.package),
            "tarball": str(self.tarball),
            "metrics": self.metrics,
            "gate": self.gate,
            "gate_passed": self.gate["passed"],
            "best_params": self.best_params,
            "trials": self.trials,
            "timings_s": self.timings,
        }


def _stage(timings: dict[str, float], name: str, t0: float) -> float:
    """Records a stage's duration for the result, says it in the log, and returns when the next
    stage starts. Progress bars show only on a terminal, so a run whose stderr goes to a file
    (``cloud demo``'s build.log, a CI job, a systemd unit) would otherwise say nothing for minutes."""
    now = time.monotonic()
    timings[name] = round(now - t0, 2)
    log.info("%s done in %.1f s", name.replace("_", " "), timings[name])
    return now


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not enabled or None,
        dynamic_ncols=True,
        leave=False,
    )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stop, kill) takes the same clean path as Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def new_version(dataset_id: str) -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{dataset_id[:8]}"


def _xy(feats: np.ndarray, items: list[Item], labels: list[str], views: int) -> tuple[np.ndarray, np.ndarray]:
    x = feats[:, :views].reshape(-1, feats.shape[-1])
    y = np.repeat(np.array([labels.index(i.label) for i in items], dtype=np.int64), views)
    return x, y


def golden_items(test: list[Item], train: list[Item], labels: list[str]) -> list[tuple[Path, str]]:
    """A spread of test images per label (by content hash), topped up from train on tiny datasets.

    Golden samples check that a device reproduces the model's outputs, not its accuracy, so a
    training image is an acceptable filler when the test split is too small.
    """
    out: list[tuple[Path, str]] = []
    for lab in labels:
        pool = [i for i in test if i.label == lab]
        step = max(1, len(pool) // GOLDEN_PER_LABEL)
        picked = pool[::step][:GOLDEN_PER_LABEL]
        picked += [i for i in train if i.label == lab][: GOLDEN_PER_LABEL - len(picked)]
        out += [(i.path, lab) for i in picked]
    return out


def _none_label(labels: list[str]) -> str | None:
    return NONE_LABEL if NONE_LABEL in labels else None


def scene_training_rows(
    data: RunData, store: FeatureStore, cfg: CloudConfig, seed: int, show_progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Head-training rows from tiles of scenes built from the fit part (pets on none photos)."""
    none = _none_label(data.labels)
    pets = [(i.path, i.label) for i in data.fit if i.label != none]
    bgs = [i.path for i in data.fit if i.label == none]
    if none is None or not bgs or not pets or not (cfg.train.scene_tiles or cfg.train.scene_tiles_empty):
        return np.zeros((0, FEATURE_DIM), np.float32), np.zeros(0, np.int64)
    specs = build_specs(pets, bgs, cfg.train.scene_tiles, cfg.train.scene_tiles_empty, seed)
    with _bar(len(specs), "scene tiles", show_progress) as bar:
        x, labs = scene_rows(
            specs,
            RegionsConfig(),
            PREPROCESS,
            store.forward,
            store.dir.name,
            store.dir / "scenetiles",
            seed,
            progress=bar.update,
        )
    if not labs:
        return np.zeros((0, FEATURE_DIM), np.float32), np.zeros(0, np.int64)
    return x, np.array([data.labels.index(lab) for lab in labs], dtype=np.int64)


def calibrate(
    data: RunData, store: FeatureStore, cfg: CloudConfig, head: Any, seed: int, show_progress: bool
) -> RejectionSpec:
    """Thresholds chosen on validation frames (close-ups and scenes of the validation part) with
    a head that never saw them; see cloud/training/rejection.py."""
    none = _none_label(data.labels)
    base = RejectionSpec(none_label=none, score_output=PET_SCORE_OUTPUT, threshold=0.5)
    frames: list[tuple[str, str, str, Any]] = [
        (i.sha256, "closeup", i.label, lambda p=i.path: load_image(p)) for i in data.val
    ]
    pets = [(i.path, i.label) for i in data.val if i.label != none]
    bgs = [i.path for i in data.val if i.label == none]
    if bgs and pets:
        specs = build_specs(
            pets, bgs, cfg.train.calibration_scenes, cfg.train.calibration_empty_scenes, seed + 1
        )
        frames += [(repr(s), s.kind, s.label, lambda s=s: render(s)) for s in specs]
    src = RegionSource(RegionsConfig(), PREPROCESS, store.forward, store.dir.name, store.dir / "regions")
    with _bar(len(frames), "calibrate", show_progress) as bar:
        feats = frame_features(frames, src, progress=bar.update)
    fc: Any = load_backbone()._fc
    w, b = fc.weight.detach().numpy(), fc.bias.detach().numpy()

    def probs(f: Any) -> Any:
        return predict_proba(head, f)

    def score(f: Any) -> Any:
        return pet_score_np(w, b, f)

    feats = second_look_features(frames, feats, probs, score, data.labels, base, src)
    sig = signals(feats, probs, score)
    abstain = InferenceConfig().confidence_threshold
    spec, figs, how = choose_thresholds(sig, data.labels, base, abstain)
    return spec.model_copy(
        update={
            "method": f"pet-evidence-v2: {how}"[:64],
            "chosen_on": "validation",
            "figures": {f"val_{k}": round(v, 4) for k, v in figs.items()}
            | {"val_frames": float(len(frames))},
        }
    )


def run_search(
    data: RunData,
    store: FeatureStore,
    cfg: CloudConfig,
    opts: TrainOptions,
    reg: Registry,
    run_id: str,
    seed: int,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[HeadParams, list[dict[str, Any]], np.ndarray]:
    views = 1 + cfg.train.augment_copies
    train = data.train
    with _bar(
        len(store.missing([(i.sha256, i.path) for i in train], views)), "features", opts.show_progress
    ) as bar:
        store.compute(store.missing([(i.sha256, i.path) for i in train], views), bar.update)
    feats = store.matrix([(i.sha256, i.path) for i in train], views)
    index = {i.sha256: k for k, i in enumerate(train)}
    fit_f = feats[[index[i.sha256] for i in data.fit]]
    val_f = feats[[index[i.sha256] for i in data.val]]
    x_fit, y_fit = _xy(fit_f, data.fit, data.labels, views)
    if extra is not None and len(extra[1]):
        x_fit, y_fit = np.concatenate([x_fit, extra[0]]), np.concatenate([y_fit, extra[1]])
    x_val, y_val = _xy(val_f, data.val, data.labels, 1)
    cands = search.candidates(
        cfg.train.space,
        opts.search or cfg.train.search,
        opts.trials if opts.trials is not None else cfg.train.trials,
        seed,
    )
    trials: list[dict[str, Any]] = []
    scores: list[tuple[float, float]] = []
    from tqdm import tqdm

    for k, cand in enumerate(
        tqdm(
            cands,
            desc="search",
            unit="trial",
            file=sys.stderr,
            disable=not opts.show_progress or None,
            leave=False,
        )
    ):
        params = search.to_params(cand, cfg.train.batch_size)
        t0 = time.monotonic()
        head = train_head(x_fit, y_fit, params, seed, len(data.labels))
        probs = predict_proba(head, x_val)
        acc = float((probs.argmax(1) == y_val).mean())
        loss = log_loss(probs, y_val)
        dur = time.monotonic() - t0
        metrics = {"val_accuracy": acc, "val_loss": loss, "n_fit": len(x_fit), "n_val": len(x_val)}
        reg.record_trial(
            TrialRecord(
                run_id=run_id, index=k, params=params.to_dict(), metrics=metrics, duration_s=round(dur, 3)
            )
        )
        trials.append(
            {"index": k, "params": params.to_dict(), "metrics": metrics, "duration_s": round(dur, 3)}
        )
        scores.append((acc, loss))
    best = search.to_params(cands[search.best_index(scores)], cfg.train.batch_size)
    return best, trials, feats


def train(cfg: CloudConfig, reg: Registry, opts: TrainOptions) -> TrainResult:
    seed = cfg.train.seed if opts.seed is None else opts.seed
    threads = cfg.train.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    data = load_run_data(reg, opts.dataset_id, cfg.train.val_fraction)
    run_id = f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    version = opts.version or new_version(data.dataset.id)
    method = opts.search or cfg.train.search
    run_cfg = {
        "train": cfg.train.model_dump(mode="json"),
        "search": method,
        "trials": opts.trials,
        "device": str(pick_device()),
        "feature_engine": pick_engine(cfg.train.feature_engine),
        "threads": threads,
        "model_version": version,
    }
    reg.start_run(run_id, data.dataset.id, method, seed, run_cfg)
    log.info(
        "run %s on dataset %s (%d train, %d test images; labels %s; seed %d; %d threads)",
        run_id,
        data.dataset.id,
        len(data.train),
        len(data.test),
        ", ".join(data.labels),
        seed,
        threads,
    )
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    try:
        with _sigterm_as_interrupt():
            store = FeatureStore(
                cfg.paths.feature_cache_dir,
                PREPROCESS,
                seed,
                cfg.train.batch_size,
                engine=cfg.train.feature_engine,
            )
            t0 = time.monotonic()
            extra = scene_training_rows(data, store, cfg, seed, opts.show_progress)
            t0 = _stage(timings, "scene_tiles", t0)
            best, trials, feats = run_search(data, store, cfg, opts, reg, run_id, seed, extra)
            t0 = _stage(timings, "features_and_search", t0)
            views = 1 + cfg.train.augment_copies
            index = {i.sha256: k for k, i in enumerate(data.train)}
            x_fit, y_fit = _xy(feats[[index[i.sha256] for i in data.fit]], data.fit, data.labels, views)
            fit_head = train_head(
                np.concatenate([x_fit, extra[0]]),
                np.concatenate([y_fit, extra[1]]),
                best,
                seed,
                len(data.labels),
            )
            # Confidence calibration on the validation carve-out (never the test split): the
            # temperature is folded into the head before the rejection thresholds are chosen,
            # so they are chosen on the probabilities the box will see.
            x_val, y_val = _xy(feats[[index[i.sha256] for i in data.val]], data.val, data.labels, 1)
            temperature = fit_temperature(logits(fit_head, x_val), y_val)
            apply_temperature(fit_head, temperature)
            rejection = calibrate(data, store, cfg, fit_head, seed, opts.show_progress)
            t0 = _stage(timings, "calibrate", t0)
            x_all, y_all = _xy(feats, data.train, data.labels, views)
            head = train_head(
                np.concatenate([x_all, extra[0]]),
                np.concatenate([y_all, extra[1]]),
                best,
                seed,
                len(data.labels),
            )
            apply_temperature(head, temperature)
            t0 = _stage(timings, "final_fit", t0)
            model = Classifier(load_backbone(), head, pet_score=True).eval()
            if cfg.train.finetune_epochs:
                model = _finetune(cfg, data, model, seed, opts)
                t0 = _stage(timings, "finetune", t0)
            built = _package(cfg, data, model, version, seed, best, trials, run_id, opts, rejection)
            _stage(timings, "export_evaluate_package", t0)
    except KeyboardInterrupt as e:
        reg.finish_run(run_id, "interrupted", error="interrupted (Ctrl-C or SIGTERM)")
        raise TrainingInterrupted(
            f"run {run_id} interrupted: nothing was registered; finished trials are kept in the registry"
        ) from e
    except Exception as e:
        reg.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}")
        raise
    metrics, gate = built.lineage["metrics"], built.lineage["gate"]
    record = ModelRecord(
        version=version,
        gate_passed=bool(gate["passed"]),
        gate=gate,
        metrics=metrics,
        lineage=built.lineage,
        package_dir=str(built.directory),
        tarball=str(built.tarball),
        tarball_sha256=built.tarball_sha256,
        dataset_id=data.dataset.id,
        run_id=run_id,
    )
    reg.register_model(record)
    reg.finish_run(
        run_id, "completed", best_params={**best.to_dict(), "temperature": temperature}, model_version=version
    )
    reg.audit.append(
        "train",
        "model.registered",
        f"model:{version}",
        {
            "stage": "candidate",
            "gate_passed": gate["passed"],
            "dataset": data.dataset.id,
            "run": run_id,
            "accuracy": metrics["accuracy"],
            "tarball_sha256": built.tarball_sha256,
        },
    )
    timings["total"] = round(time.monotonic() - t_start, 2)
    log.info(
        "registered %s in %.1f s: test accuracy %.4f, gate %s",
        version,
        timings["total"],
        metrics["accuracy"],
        "passed" if gate["passed"] else "failed",
    )
    return TrainResult(
        version, run_id, built.directory, built.tarball, metrics, gate, best.to_dict(), trials, timings
    )


def _finetune(
    cfg: CloudConfig, data: RunData, model: Classifier, seed: int, opts: TrainOptions
) -> Classifier:
    from cloud.training.finetune import finetune

    train = data.train
    with _bar(len(train) * cfg.train.finetune_epochs, "fine-tune", opts.show_progress) as bar:
        return finetune(
            model,
            train,
            data.labels,
            PREPROCESS,
            cfg.train.finetune_epochs,
            cfg.train.finetune_lr,
            cfg.train.finetune_blocks,
            seed,
            cfg.train.batch_size,
            pick_device(),
            bar.update,
        )


def _package(
    cfg: CloudConfig,
    data: RunData,
    model: Classifier,
    version: str,
    seed: int,
    best: HeadParams,
    trials: list[dict[str, Any]],
    run_id: str,
    opts: TrainOptions,
    rejection: RejectionSpec | None = None,
) -> Any:
    test_items = [(i.path, i.label) for i in data.test]
    golden = golden_items(data.test, data.train, data.labels)
    parity = [p for p, _ in test_items[:: max(1, len(test_items) // PARITY_IMAGES)]][:PARITY_IMAGES]
    lineage = {
        **base_lineage(),
        "dataset_version": data.dataset.id,
        "dataset_counts": data.dataset.counts,
        "run_id": run_id,
        "parameters": {
            "head": best.to_dict(),
            "seed": seed,
            "augment_copies": cfg.train.augment_copies,
            "val_fraction": cfg.train.val_fraction,
            "search": opts.search or cfg.train.search,
            "trials": len(trials),
            "base_model": "efficientnet-lite0 (frozen, ImageNet-1k)",
            "rejection": rejection.model_dump(mode="json") if rejection is not None else None,
            "scene_tiles": {
                "scenes": cfg.train.scene_tiles,
                "empty": cfg.train.scene_tiles_empty,
                "calibration_scenes": cfg.train.calibration_scenes,
                "calibration_empty": cfg.train.calibration_empty_scenes,
            },
            "preprocess": PREPROCESS.model_dump(mode="json"),
            "finetune": {
                "epochs": cfg.train.finetune_epochs,
                "lr": cfg.train.finetune_lr,
                "blocks": cfg.train.finetune_blocks,
            },
        },
        "search": {"best_val_accuracy": max(t["metrics"]["val_accuracy"] for t in trials)},
    }

    def evaluate(onnx_path: Path) -> tuple[dict[str, Any], dict[str, Any], str, dict[str, Any]]:
        with _bar(len(test_items), "test", opts.show_progress) as bar:
            ev = evaluate_onnx(
                onnx_path,
                test_items,
                cfg.gate,
                {"dataset_version": data.dataset.id, "run_id": run_id, "split": "test"},
                bar.update,
                eval_cfg=cfg.evaluation,
            )
        return (
            ev.metrics,
            ev.gate,
            ev.html,
            {"dataset_version": data.dataset.id, "split": "test", "predictions": ev.predictions},
        )

    spec = PackageSpec(
        metadata=ModelMetadata(
            labels=tuple(data.labels), preprocess=PREPROCESS, model_version=version, rejection=rejection
        ),
        model=model,
        golden=golden,
        parity_images=parity,
        lineage=lineage,
        description=(
            f"EfficientNet-Lite0 (ImageNet-pretrained, frozen) with a trained head for "
            f"{', '.join(data.labels)}; trained by run {run_id} on dataset {data.dataset.id[:16]}."
        ),
        evaluate=evaluate,
    )
    return build_package(spec, cfg.paths.models_dir)
