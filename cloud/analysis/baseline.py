"""A model version's test-set baseline: what its predictions looked like on held-out data.

Drift is measured against this, never against an arbitrary earlier week, so a model that was
already drifting when it shipped cannot become "normal". Where it comes from, in order:

1. the registry: ``metrics["baseline"]`` (or ``lineage["baseline"]``) of the model version;
2. the evaluation JSON in the model package (``evaluation.json``): a ``baseline`` object, or one
   computed here from per-sample ``predictions`` (``{"label"|"pred", "confidence"}``) it lists;
3. otherwise none: the analysis reports "no baseline" for that model and raises no drift alert.

The format (``Baseline.to_dict``) is the contract with the build pipeline::

    {"class_mix": {"cat": 0.49, "dog": 0.51}, "abstain_rate": 0.02, "accuracy": 0.97, "n": 400,
     "confidence_hist": {"edges": [0.5, 0.55, ..., 1.0], "counts": [3, 1, ...]}}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud.analysis.stats import histogram

log = logging.getLogger("parkwatch.cloud.analysis")

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

    @property
    def labels(self) -> list[str]:
        return sorted(self.class_mix)

    def to_dict(self) -> dict[str, Any]:
        return {"class_mix": self.class_mix, "confidence_hist": {"edges": self.edges, "counts": self.counts},
                "abstain_rate": self.abstain_rate, "accuracy": self.accuracy, "n": self.n,
                "mean_confidence": self.mean_confidence, "source": self.source}

    @classmethod
    def from_dict(cls, version: str, d: dict[str, Any], source: str) -> Baseline:
        hist = d.get("confidence_hist") or {}
        edges = [float(x) for x in hist.get("edges") or DEFAULT_EDGES]
        counts = [float(x) for x in hist.get("counts") or []]
        if len(counts) != len(edges) - 1:
            raise ValueError(f"confidence_hist has {len(counts)} counts for {len(edges)} edges")
        mix = {str(k): float(v) for k, v in (d.get("class_mix") or {}).items()}
        if not mix:
            raise ValueError("class_mix is empty")
        total = sum(mix.values())
        mix = {k: v / total for k, v in mix.items()}
        mean = d.get("mean_confidence")
        if mean is None and sum(counts):
            centers = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
            mean = float(np.dot(centers, counts) / sum(counts))
        return cls(version=version, class_mix=mix, edges=edges, counts=counts,
                   abstain_rate=float(d.get("abstain_rate") or 0.0),
                   accuracy=None if d.get("accuracy") is None else float(d["accuracy"]),
                   n=int(d.get("n") or sum(counts)), source=source, mean_confidence=mean)


def from_samples(version: str, labels: list[str], confidences: list[float], accuracy: float | None,
                 abstain_threshold: float = 0.0, source: str = "samples") -> Baseline:
    """Build a baseline from per-sample predictions on the test split."""
    conf = np.asarray(confidences, dtype=float)
    kept = [lab for lab, c in zip(labels, confidences, strict=True) if c >= abstain_threshold and lab != "abstain"]
    mix: dict[str, float] = {}
    for lab in kept:
        mix[lab] = mix.get(lab, 0.0) + 1.0
    return Baseline(
        version=version, class_mix={k: v / max(len(kept), 1) for k, v in mix.items()},
        edges=list(DEFAULT_EDGES), counts=histogram(conf, DEFAULT_EDGES).tolist(),
        abstain_rate=1 - len(kept) / max(len(labels), 1), accuracy=accuracy, n=len(labels),
        source=source, mean_confidence=float(conf.mean()) if len(conf) else None,
    )


def _from_evaluation(version: str, path: Path) -> Baseline | None:
    try:
        ev = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    acc = (ev.get("metrics") or {}).get("accuracy")
    if isinstance(ev.get("baseline"), dict):
        return Baseline.from_dict(version, ev["baseline"], f"evaluation:{path}")
    samples = ev.get("predictions") or ev.get("samples")
    if isinstance(samples, list) and samples:
        labels = [str(s.get("label") or s.get("pred")) for s in samples]
        confs = [float(s["confidence"]) for s in samples]
        return from_samples(version, labels, confs, acc, source=f"evaluation-samples:{path}")
    return None


def resolve(registry_db: Path, version: str) -> Baseline | None:
    """The baseline of ``version`` from the registry or its package; ``None`` when neither has one."""
    try:
        from cloud.registry.store import Registry
    except ImportError:  # the registry is an optional neighbour for this module's tests
        return None
    if not registry_db.exists():
        return None
    try:
        with Registry(registry_db) as reg:
            model = reg.get_model(version)
    except Exception as e:  # NotFoundError or an unreadable registry: no baseline, say why once
        log.info("no registry entry for model %s: %s", version, e)
        return None
    for where, d in (("metrics", model.metrics), ("lineage", model.lineage)):
        b = d.get("baseline") if isinstance(d, dict) else None
        if isinstance(b, dict):
            try:
                return Baseline.from_dict(version, b, f"registry:{where}.baseline")
            except (ValueError, TypeError) as e:
                log.warning("model %s: registry %s.baseline is unusable: %s", version, where, e)
    if model.package_dir:
        return _from_evaluation(version, Path(model.package_dir) / "evaluation.json")
    return None
