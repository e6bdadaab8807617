"""Drift and performance per model version, site and device over one window.

``figures`` is pure: a cohort's predictions (and labels) against its model's test-set baseline.
Verdicts need ``min_samples`` predictions (``min_labels`` labels): below that a cohort gets
figures but no verdict, because PSI and K-S on a handful of frames are noise.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.analysis.baseline import DEFAULT_EDGES, Baseline
from cloud.analysis.config import AnalysisConfig
from cloud.analysis.stats import (
    cbpe_accuracy,
    histogram,
    js_distance,
    ks_against_hist,
    proportions,
    psi,
    wasserstein_hist,
)
from cloud.fleet.store import FleetStore
from cloud.governance.rules import Finding


@dataclass
class Cohort:
    model_version: str
    site: str
    device: str = ""  # '' = the whole site
    labels: list[str] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)
    abstain: list[bool] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)


def performance(feedback: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision and recall, and the recall gap from operator labels.

    A frame labelled ``neither`` counts against any cat/dog prediction (a false alarm); an
    abstention is not scored (the model declined)."""
    scored = [f for f in feedback if f["predicted"] != "abstain"]
    n = len(scored)
    out: dict[str, Any] = {"n_labels": n, "accuracy": None, "precision": {}, "recall": {}, "recall_gap": None}
    if n == 0:
        return out
    out["accuracy"] = sum(f["predicted"] == f["label"] for f in scored) / n
    for c in classes:
        tp = sum(f["predicted"] == c and f["label"] == c for f in scored)
        pred_c = sum(f["predicted"] == c for f in scored)
        true_c = sum(f["label"] == c for f in scored)
        out["precision"][c] = tp / pred_c if pred_c else None
        out["recall"][c] = tp / true_c if true_c else None
    rec = [v for v in out["recall"].values() if v is not None]
    if len(rec) >= 2:
        out["recall_gap"] = max(rec) - min(rec)
    return out


def figures(
    c: Cohort, base: Baseline | None, fb: list[dict[str, Any]], acfg: AnalysisConfig
) -> dict[str, Any]:
    n = len(c.labels)
    conf = np.asarray(c.conf, dtype=float)
    classes = base.labels if base else sorted({lab for lab in c.labels if lab != "abstain"})
    mix_counts: dict[str, float] = defaultdict(float)
    for lab, ab in zip(c.labels, c.abstain, strict=True):
        if not ab and lab != "abstain":
            mix_counts[lab] += 1
    edges = base.edges if base else DEFAULT_EDGES
    out: dict[str, Any] = {
        "model_version": c.model_version,
        "site": c.site,
        "device": c.device,
        "n": n,
        "class_mix": {k: v / max(sum(mix_counts.values()), 1) for k, v in sorted(mix_counts.items())},
        "abstain_rate": sum(c.abstain) / n if n else None,
        "flag_rate": sum(c.flagged) / n if n else None,
        "est_accuracy": cbpe_accuracy(conf) if n else None,
        "confidence_hist": {"edges": list(edges), "counts": histogram(conf, edges).tolist()},
        "baseline": base.to_dict() if base else None,
        "psi": None,
        "js": None,
        "ks": None,
        "ks_p": None,
        "wasserstein": None,
        "est_accuracy_note": "estimate from confidence (CBPE-style), not measured",
        "verdict": [],
        "enough_samples": n >= acfg.min_samples,
    }
    perf = performance(fb, [k for k in classes if k != "neither"])
    out.update(
        {
            "accuracy": perf["accuracy"],
            "n_labels": perf["n_labels"],
            "precision": perf["precision"],
            "recall": perf["recall"],
            "recall_gap": perf["recall_gap"],
        }
    )
    if base is None or n == 0:
        return out
    cats = sorted(set(base.class_mix) | set(mix_counts))
    e, a = proportions(base.class_mix, cats), proportions(mix_counts, cats)
    out["psi"], out["js"] = psi(e, a), js_distance(e, a)
    out["ks"], out["ks_p"] = ks_against_hist(conf, np.asarray(base.counts), base.edges)
    out["wasserstein"] = wasserstein_hist(histogram(conf, base.edges), np.asarray(base.counts), base.edges)
    ref_acc = base.accuracy if base.accuracy is not None else base.mean_confidence
    out["baseline_accuracy"] = ref_acc
    v: list[tuple[str, str]] = out["verdict"]
    if n >= acfg.min_samples:
        if out["psi"] >= acfg.psi_threshold or out["js"] >= acfg.js_threshold:
            v.append(
                (
                    "class_mix_drift",
                    f"class mix {_mix(out['class_mix'])} vs baseline {_mix(base.class_mix)} "
                    f"(PSI {out['psi']:.3f}, JS {out['js']:.3f})",
                )
            )
        if out["ks_p"] < acfg.ks_pvalue and out["ks"] >= acfg.ks_min_statistic:
            v.append(
                (
                    "confidence_drift",
                    f"confidence distribution shifted (K-S {out['ks']:.3f}, "
                    f"p={out['ks_p']:.2g}, Wasserstein {out['wasserstein']:.3f})",
                )
            )
        if out["abstain_rate"] - base.abstain_rate > acfg.abstain_rate_increase:
            v.append(
                (
                    "abstain_rate",
                    f"abstains on {out['abstain_rate']:.0%} of frames (baseline {base.abstain_rate:.0%})",
                )
            )
        if out["flag_rate"] > acfg.integrity_rate_max:
            v.append(("integrity_rate", f"{out['flag_rate']:.0%} of frames carry integrity flags"))
        if ref_acc is not None and ref_acc - out["est_accuracy"] > acfg.est_accuracy_drop:
            v.append(
                (
                    "estimated_accuracy_drop",
                    f"estimated accuracy {out['est_accuracy']:.1%} vs baseline "
                    f"{ref_acc:.1%} (an estimate from confidence, not a measurement)",
                )
            )
    if perf["n_labels"] >= acfg.min_labels:
        if ref_acc is not None and ref_acc - perf["accuracy"] > acfg.accuracy_drop:
            v.append(
                (
                    "accuracy_drop",
                    f"accuracy {perf['accuracy']:.1%} on {perf['n_labels']} labelled frames vs "
                    f"baseline {ref_acc:.1%}",
                )
            )
        if perf["recall_gap"] is not None and perf["recall_gap"] > acfg.recall_gap_max:
            rec = ", ".join(f"{k} {r:.0%}" for k, r in perf["recall"].items() if r is not None)
            v.append(("recall_gap", f"recall gap {perf['recall_gap']:.0%} ({rec})"))
    return out


def _mix(m: dict[str, float]) -> str:
    return "/".join(f"{k} {v:.0%}" for k, v in sorted(m.items()))


def _clean(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def analyze(
    store: FleetStore,
    acfg: AnalysisConfig,
    now: float,
    run_id: str,
    baseline_of: Callable[[str], Baseline | None],
) -> tuple[list[dict[str, Any]], list[Finding], set[tuple[str, str]]]:
    """Figures for every (model, site) and (model, site, device) cohort in the window, the findings,
    and the (site, model) cohorts that had enough data for a verdict (their old alerts may clear)."""
    since = now - acfg.window_s
    cohorts: dict[tuple[str, str, str], Cohort] = {}
    cur = store.db.conn.execute(
        "SELECT model_version, site, device, label, confidence, abstain, flags FROM predictions "
        "WHERE ts>=? AND ts<=?",
        (since, now),
    )
    for mv, site, dev, label, conf, ab, flags in cur:
        for key in ((mv, site, ""), (mv, site, dev)):
            c = cohorts.get(key)
            if c is None:
                c = cohorts[key] = Cohort(mv, site, key[2])
            c.labels.append(label)
            c.conf.append(conf)
            c.abstain.append(bool(ab))
            c.flagged.append(bool(flags and flags != "[]"))
    baselines = {mv: baseline_of(mv) for mv in {k[0] for k in cohorts}}
    feedback = store.feedback(since=since, until=now)
    results, findings, covered = [], [], set()
    site_rules: dict[tuple[str, str], set[str]] = {}
    for key in sorted(cohorts, key=lambda k: (k[0], k[1], k[2] != "", k[2])):
        mv, site, dev = key
        fb = [
            f
            for f in feedback
            if f["model_version"] == mv and f["site"] == site and (not dev or f["device"] == dev)
        ]
        fig = figures(cohorts[key], baselines[mv], fb, acfg)
        rules = [r for r, _ in fig["verdict"]]
        if not dev:
            site_rules[(mv, site)] = set(rules)
            if fig["enough_samples"] and baselines[mv] is not None:
                covered.add((site, mv))
        for rule, msg in fig["verdict"]:
            if dev and rule in site_rules.get((mv, site), set()):
                continue  # the site-level alert already covers this device
            where = f"{site}/{dev}" if dev else f"site {site}"
            findings.append(
                Finding(
                    rule,
                    site,
                    f"model {mv} at {where}: {msg}",
                    device=dev or None,
                    subject=mv,
                    details={
                        "model_version": mv,
                        "run_id": run_id,
                        "n": fig["n"],
                        **{
                            k: _clean(fig[k]) for k in ("psi", "js", "ks", "ks_p", "abstain_rate", "accuracy")
                        },
                    },
                )
            )
        results.append(
            {
                "run_id": run_id,
                "ts": now,
                "window_start": since,
                "window_end": now,
                "model_version": mv,
                "site": site,
                "device": dev,
                "n": fig["n"],
                **{
                    k: _clean(fig[k])
                    for k in (
                        "psi",
                        "js",
                        "ks",
                        "ks_p",
                        "wasserstein",
                        "abstain_rate",
                        "flag_rate",
                        "est_accuracy",
                        "accuracy",
                        "n_labels",
                        "recall_gap",
                    )
                },
                "drifted": int(bool(rules)),
                "reasons": [m for _, m in fig["verdict"]],
                "details": json.loads(json.dumps(fig, default=_clean)),
            }
        )
    return results, findings, covered
