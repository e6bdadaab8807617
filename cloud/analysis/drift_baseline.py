"""A model version's test-set baseline: what its predictions looked like on held-out data.

Drift is measured against this, never against an arbitrary earlier week, so a model that was
already drifting when it shipped cannot become "normal". Where it comes from, in order:

1. the registry: ``metrics["baseline"]`` (or ``lineage["baseline"]``, ``lineage["metrics"]["baseline"]``)
   of the model version, as ``cloud/evaluation/metrics.py`` writes it (``prediction_mix``,
   ``confidence_hist`` with ``bins``/``range``/``counts``, ``mean_confidence``);
2. the evaluation JSON in the model package (``evaluation.json``): a ``baseline`` object (top level
   or under ``metrics``), or one
   computed here from per-sample ``predictions`` (``{"label"|"pred", "confidence"}``) it lists;
3. otherwise none: the analysis reports "no baseline" for that model and raises no drift alert.

The format (``Baseline.to_dict``) is the contract with the build pipeline::

    {"class_mix": {"cat": 0.49, "dog": 0.51}, "abstain_rate": 0.02, "accuracy": 0.97, "n": 400,
     "confidence_hist": {"edges": [0.5, 0.55, ..., 1.0], "counts": [3, 1, ...]}}

A model with a ``none`` class has ``none`` in ``class_mix`` like any label. Optional keys:
``confidence_hist_by_class`` (``{label: counts}`` on the same edges) and ``modes``
(``{"day": {...}, "ir": {...}}``, each a baseline in this same format, e.g. from the greyscale
scene copies); ``cloud.analysis.drift`` uses them when present.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud.analysis.stats import histogram
from cloud.registry.store import Registry

log = logging.getLogger("parkwatch.cloud.analysis")

DEFAULT_ABSTAIN = 0.6  # edge inference.confidence_threshold default
DEFAULT_EDGES = [round(0.5 + 0.025 * i, 4) for i in range(21)]  # 0.5 .. 1.0 (two classes)


@dataclass
class Baseline:
    version: str
    class_mix: dict[str, float]
    edges: list[float]
    counts: list[float]
    abstain_rate: float = 0.0
    accuracy: float | None = None
    n: int = 0
    source: str = ""
    mean_confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Confidence histogram per predicted label on the same edges (optional): lets drift compare
    # the confidence of pet calls alone, whatever share of frames the field calls ``none``.
    by_class: dict[str, list[float]] = field(default_factory=dict)
    # A baseline per lighting mode (optional; ``day``/``ir``, e.g. from greyscale scene copies):
    # drift of IR frames is then judged against IR-like test frames, mix included.
    modes: dict[str, Baseline] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted(self.class_mix)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class_mix": self.class_mix,
            "confidence_hist": {"edges": self.edges, "counts": self.counts},
            "abstain_rate": self.abstain_rate,
            "accuracy": self.accuracy,
            "n": self.n,
            "mean_confidence": self.mean_confidence,
            "source": self.source,
        }
        if self.by_class:
            out["confidence_hist_by_class"] = self.by_class
        if self.modes:
            out["modes"] = {k: b.to_dict() for k, b in self.modes.items()}
        return out

    @classmethod
    def from_dict(
        cls,
        version: str,
        d: dict[str, Any],
        source: str,
        accuracy: float | None = None,
        abstain_threshold: float = DEFAULT_ABSTAIN,
    ) -> Baseline:
        """Accepts our format and the evaluation's (``prediction_mix``; ``confidence_hist`` given as
        ``bins``/``range``); a missing abstain rate is the baseline's mass below ``abstain_threshold``."""
        hist = d.get("confidence_hist") or {}
        if hist.get("edges"):
            edges = [float(x) for x in hist["edges"]]
        elif hist.get("bins"):
            lo, hi = (hist.get("range") or [0.0, 1.0])[:2]
            n = int(hist["bins"])
            edges = [float(lo + (hi - lo) * i / n) for i in range(n + 1)]
        else:
            edges = list(DEFAULT_EDGES)
        counts = [float(x) for x in hist.get("counts") or []]
        if len(counts) != len(edges) - 1:
            raise ValueError(f"confidence_hist has {len(counts)} counts for {len(edges)} edges")
        mix = {str(k): float(v) for k, v in (d.get("class_mix") or d.get("prediction_mix") or {}).items()}
        if not mix or sum(mix.values()) <= 0:
            raise ValueError("class_mix (or prediction_mix) is empty")
        total = sum(mix.values())
        mix = {k: v / total for k, v in mix.items()}
        mean = d.get("mean_confidence")
        if mean is None and sum(counts) > 0:
            centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
            mean = float(np.dot(centers, counts) / sum(counts))
        abstain = d.get("abstain_rate")
        if abstain is None:
            below = sum(c for c, hi in zip(counts, edges[1:], strict=True) if hi <= abstain_threshold + 1e-9)
            abstain = below / sum(counts) if sum(counts) > 0 else 0.0
        acc = d.get("accuracy", accuracy)
        by_class: dict[str, list[float]] = {}
        for lab, h in (d.get("confidence_hist_by_class") or {}).items():
            c = [float(x) for x in ((h.get("counts") if isinstance(h, dict) else h) or [])]
            if len(c) != len(counts):
                raise ValueError(f"confidence_hist_by_class[{lab!r}] has {len(c)} counts, not {len(counts)}")
            by_class[str(lab)] = c
        modes = {
            str(m): cls.from_dict(version, sub, f"{source}.modes.{m}", abstain_threshold=abstain_threshold)
            for m, sub in (d.get("modes") or {}).items()
            if isinstance(sub, dict)
        }
        return cls(
            version=version,
            class_mix=mix,
            edges=edges,
            counts=counts,
            abstain_rate=float(abstain),
            accuracy=None if acc is None else float(acc),
            n=int(d.get("n") or sum(counts)),
            source=source,
            mean_confidence=mean,
            by_class=by_class,
            modes=modes,
        )


def from_samples(
    version: str,
    labels: list[str],
    confidences: list[float],
    accuracy: float | None,
    abstain_threshold: float = 0.0,
    source: str = "samples",
) -> Baseline:
    """Build a baseline from per-sample predictions on the test split."""
    conf = np.asarray(confidences, dtype=float)
    kept = [
        lab for lab, c in zip(labels, confidences, strict=True) if c >= abstain_threshold and lab != "abstain"
    ]
    mix: dict[str, float] = {}
    for lab in kept:
        mix[lab] = mix.get(lab, 0.0) + 1.0
    by_class = {
        lab: histogram(
            np.asarray([c for la, c in zip(labels, confidences, strict=True) if la == lab], dtype=float),
            DEFAULT_EDGES,
        ).tolist()
        for lab in sorted(set(labels) - {"abstain"})
    }
    return Baseline(
        version=version,
        class_mix={k: v / max(len(kept), 1) for k, v in mix.items()},
        edges=list(DEFAULT_EDGES),
        counts=histogram(conf, DEFAULT_EDGES).tolist(),
        abstain_rate=1 - len(kept) / max(len(labels), 1),
        accuracy=accuracy,
        n=len(labels),
        source=source,
        mean_confidence=float(conf.mean()) if len(conf) else None,
        by_class=by_class,
    )


def _from_evaluation(version: str, path: Path, abstain_threshold: float = DEFAULT_ABSTAIN) -> Baseline | None:
    try:
        ev = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    metrics = ev.get("metrics") or {}
    acc = metrics.get("accuracy")
    for b in (ev.get("baseline"), metrics.get("baseline")):
        if isinstance(b, dict):
            try:
                return Baseline.from_dict(
                    version, b, f"evaluation:{path}", accuracy=acc, abstain_threshold=abstain_threshold
                )
            except (ValueError, TypeError) as e:
                log.warning("model %s: %s has an unusable baseline: %s", version, path, e)
    samples = ev.get("predictions") or ev.get("samples")
    if isinstance(samples, list) and samples:
        labels = [str(s.get("label") or s.get("pred")) for s in samples]
        confs = [float(s["confidence"]) for s in samples]
        return from_samples(
            version, labels, confs, acc, abstain_threshold, source=f"evaluation-samples:{path}"
        )
    return None


def resolve(registry_db: Path, version: str, abstain_threshold: float = DEFAULT_ABSTAIN) -> Baseline | None:
    """The baseline of ``version`` from the registry or its package; ``None`` when neither has one."""
    if not registry_db.exists():
        return None
    try:
        with Registry(registry_db) as reg:
            model = reg.get_model(version)
    except Exception as e:  # NotFoundError or an unreadable registry: no baseline, say why once
        log.info("no registry entry for model %s: %s", version, e)
        return None
    lineage_metrics = (model.lineage or {}).get("metrics")
    for where, d in (
        ("metrics", model.metrics),
        ("lineage", model.lineage),
        ("lineage.metrics", lineage_metrics if isinstance(lineage_metrics, dict) else {}),
    ):
        b = d.get("baseline") if isinstance(d, dict) else None
        if isinstance(b, dict):
            try:
                return Baseline.from_dict(
                    version,
                    b,
                    f"registry:{where}.baseline",
                    accuracy=(model.metrics or {}).get("accuracy"),
                    abstain_threshold=abstain_threshold,
                )
            except (ValueError, TypeError) as e:
                log.warning("model %s: registry %s.baseline is unusable: %s", version, where, e)
    if model.package_dir:
        return _from_evaluation(version, Path(model.package_dir) / "evaluation.json", abstain_threshold)
    return None
