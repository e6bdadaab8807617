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

from cloud.analysis.config import AnalysisConfig
from cloud.analysis.drift_baseline import DEFAULT_EDGES, Baseline
from cloud.analysis.stats import (
    cbpe_accuracy,
    histogram,
    js_distance,
    ks_against_hist,
    proportions,
    psi,
    wasserstein_hist,
)
from cloud.fleet.outcomes import ABSTAIN, LEGACY_NONE, MODES, NONE, canonical_label, mode_of, outcome
from cloud.fleet.records import Feedback
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
    ir: list[bool | None] = field(default_factory=list)  # None: the box did not say

    def add(self, label: str, conf: float, abstain: bool, flagged: bool, ir: bool | None = None) -> None:
        self.labels.append(label)
        self.conf.append(conf)
        self.abstain.append(abstain)
        self.flagged.append(flagged)
        self.ir.append(ir)

    def mode(self, mode: str) -> Cohort:
        """The frames of one lighting mode (``day``/``ir``); frames of unknown lighting in none."""
        sub = Cohort(self.model_version, self.site, self.device)
        for i, ir in enumerate(self.ir):
            if mode_of(ir) == mode:
                sub.add(self.labels[i], self.conf[i], self.abstain[i], self.flagged[i], ir)
        return sub


def performance(feedback: list[Feedback], classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision and recall, the recall gap and the confusion matrix from
    operator labels, over the model's classes and ``none``.

    A frame labelled ``none`` (no cat or dog; ``neither`` is its older name) is right only when
    the model said ``none``, and counts against any cat/dog call (a false alarm); a pet the model
    called ``none`` is a miss. An abstention is not scored (the model declined) but is shown in the
    confusion matrix's ``abstain`` column. The recall gap is between the pet classes."""
    rows = [(canonical_label(f.label), outcome(f.predicted)) for f in feedback]
    scored = [(t, p) for t, p in rows if p != ABSTAIN]
    n = len(scored)
    seen = {t for t, _ in rows} | {p for _, p in rows if p != ABSTAIN}
    cls = [c for c in classes if c != LEGACY_NONE]
    cls += sorted(seen - set(cls) - {NONE}) + ([NONE] if NONE in seen and NONE not in cls else [])
    out: dict[str, Any] = {
        "n_labels": n,
        "accuracy": None,
        "precision": {},
        "recall": {},
        "recall_gap": None,
        "confusion": {
            "labels": cls,
            "columns": [*cls, ABSTAIN],
            "matrix": [
                [sum(1 for t2, p2 in rows if t2 == t and p2 == p) for p in (*cls, ABSTAIN)] for t in cls
            ],
        },
    }
    if n == 0:
        return out
    out["accuracy"] = sum(p == t for t, p in scored) / n
    for c in cls:
        tp = sum(p == c and t == c for t, p in scored)
        pred_c = sum(p == c for _, p in scored)
        true_c = sum(t == c for t, _ in scored)
        out["precision"][c] = tp / pred_c if pred_c else None
        out["recall"][c] = tp / true_c if true_c else None
    rec = [v for k, v in out["recall"].items() if v is not None and k != NONE]
    if len(rec) >= 2:
        out["recall_gap"] = max(rec) - min(rec)
    return out


def _pets(mix: dict[str, float]) -> dict[str, float]:
    """The cat/dog mix among frames that held a pet: ``none`` is how busy the scene is, not
    what the model thinks of the animals it sees, so it stays out of the mix that is judged."""
    return {k: v for k, v in mix.items() if k not in (NONE, ABSTAIN, LEGACY_NONE)}


def _live_confidences(c: Cohort, base: Baseline) -> tuple[np.ndarray, np.ndarray, str]:
    """(live confidences, baseline counts, what was compared) for the K-S and Wasserstein figures.

    ``none`` calls are left out whenever the baseline allows the same (its per-class histograms,
    or a baseline with no ``none`` at all): the share of empty frames differs between a test split
    and a park path, and mixing it in would read as confidence drift."""
    conf = np.asarray(c.conf, dtype=float)
    not_none = np.asarray([outcome(lab, ab) != NONE for lab, ab in zip(c.labels, c.abstain, strict=True)])
    if base.by_class:
        counts = np.sum(
            [np.asarray(v) for k, v in base.by_class.items() if k != NONE] or [np.asarray(base.counts)],
            axis=0,
        )
        return conf[not_none] if len(conf) else conf, counts, "pet calls and abstentions"
    if NONE not in base.class_mix:
        return conf[not_none] if len(conf) else conf, np.asarray(base.counts), "pet calls and abstentions"
    return conf, np.asarray(base.counts), "all frames"


def figures(
    c: Cohort,
    base: Baseline | None,
    fb: list[Feedback],
    acfg: AnalysisConfig,
    fb_ir: dict[tuple[str, int], bool | None] | None = None,
) -> dict[str, Any]:
    """The cohort's figures and verdict, plus the same per lighting mode under ``modes``.

    A mode's frames are judged against the baseline's own figures for that mode when it has them,
    else against the whole baseline (without the class mix, which differs between day and night
    for reasons that are not the model's). A mode with fewer than ``min_samples`` frames is "not
    judged"."""
    out = _figures(c, base, fb, acfg, judge_mix=True)
    modes: dict[str, Any] = {}
    for m in MODES:
        sub = c.mode(m)
        if not sub.labels:
            continue
        mb = base.modes.get(m) if base else None
        mfb = [f for f in fb if mode_of((fb_ir or {}).get((f.device, f.seq))) == m]
        fig = _figures(sub, mb or base, mfb, acfg, judge_mix=mb is not None)
        fig["baseline_for_mode"] = mb is not None
        fig.pop("baseline", None)
        modes[m] = fig
    out["modes"] = modes
    out["lighting_unknown"] = sum(ir is None for ir in c.ir)
    return out


def _figures(
    c: Cohort, base: Baseline | None, fb: list[Feedback], acfg: AnalysisConfig, judge_mix: bool
) -> dict[str, Any]:
    n = len(c.labels)
    conf = np.asarray(c.conf, dtype=float)
    classes = base.labels if base else sorted({lab for lab in c.labels if lab != ABSTAIN})
    mix_counts: dict[str, float] = defaultdict(float)
    by_class_conf: dict[str, list[float]] = defaultdict(list)
    for lab, ab, cf in zip(c.labels, c.abstain, c.conf, strict=True):
        o = outcome(lab, ab)
        if o != ABSTAIN:
            mix_counts[o] += 1
            by_class_conf[o].append(cf)
    decided = sum(mix_counts.values())
    edges = base.edges if base else DEFAULT_EDGES
    out: dict[str, Any] = {
        "model_version": c.model_version,
        "site": c.site,
        "device": c.device,
        "n": n,
        "class_mix": {k: v / max(decided, 1) for k, v in sorted(mix_counts.items())},
        "pet_mix": {
            k: v / max(sum(_pets(mix_counts).values()), 1) for k, v in sorted(_pets(mix_counts).items())
        },
        "counts": {
            "pets": {k: int(v) for k, v in sorted(_pets(mix_counts).items())},
            NONE: int(mix_counts.get(NONE, 0)),
            ABSTAIN: n - int(decided),
        },
        "none_share": mix_counts.get(NONE, 0.0) / decided if decided else None,
        "abstain_rate": sum(c.abstain) / n if n else None,
        "flag_rate": sum(c.flagged) / n if n else None,
        "est_accuracy": cbpe_accuracy(conf) if n else None,
        # CBPE per predicted outcome (none included): the expected share of those calls that are right.
        "est_precision": {k: cbpe_accuracy(np.asarray(v)) for k, v in sorted(by_class_conf.items())},
        "confidence_hist": {"edges": list(edges), "counts": histogram(conf, edges).tolist()},
        "baseline": base.to_dict() if base else None,
        "psi": None,
        "js": None,
        "ks": None,
        "ks_p": None,
        "wasserstein": None,
        "est_accuracy_note": "estimate from confidence (CBPE-style), not measured",
        "baseline_none_share": None,
        "verdict": [],
        "enough_samples": n >= acfg.min_samples,
    }
    perf = performance(fb, [k for k in classes if k != LEGACY_NONE])
    out.update(
        {
            "accuracy": perf["accuracy"],
            "n_labels": perf["n_labels"],
            "precision": perf["precision"],
            "recall": perf["recall"],
            "recall_gap": perf["recall_gap"],
            "confusion": perf["confusion"],
        }
    )
    if base is None or n == 0:
        return out
    out["baseline_none_share"] = base.class_mix.get(NONE)
    base_pets, live_pets = _pets(base.class_mix), _pets(mix_counts)
    if base_pets and live_pets:
        cats = sorted(set(base_pets) | set(live_pets))
        e, a = proportions(base_pets, cats), proportions(live_pets, cats)
        out["psi"], out["js"] = psi(e, a), js_distance(e, a)
    live_conf, base_counts, compared = _live_confidences(c, base)
    out["confidence_compared"] = compared
    out["ks"], out["ks_p"] = ks_against_hist(live_conf, base_counts, base.edges)
    out["wasserstein"] = wasserstein_hist(histogram(live_conf, base.edges), base_counts, base.edges)
    ref_acc = base.accuracy if base.accuracy is not None else base.mean_confidence
    out["baseline_accuracy"] = ref_acc
    v: list[tuple[str, str]] = out["verdict"]
    if n >= acfg.min_samples:
        if (
            judge_mix
            and out["psi"] is not None
            and (out["psi"] >= acfg.psi_threshold or out["js"] >= acfg.js_threshold)
        ):
            v.append(
                (
                    "class_mix_drift",
                    f"class mix {_mix(out['pet_mix'])} vs baseline {_mix(_norm(base_pets))} "
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


def _norm(m: dict[str, float]) -> dict[str, float]:
    t = sum(m.values())
    return {k: v / t for k, v in m.items()} if t > 0 else m


def mode_subject(model_version: str, mode: str) -> str:
    """The alert subject of a per-lighting-mode finding: its own alert, cleared on its own."""
    return f"{model_version}@{mode}"


def _mode_findings(
    fig: dict[str, Any],
    mv: str,
    site: str,
    run_id: str,
    site_rules: set[str],
    has_baseline: bool,
    covered: set[tuple[str, str]],
) -> list[Finding]:
    """Site-level findings of each lighting mode that the all-frames figures did not already raise
    (night frames drifting while the day hides it in the total)."""
    out = []
    for mode, m in fig.get("modes", {}).items():
        if m["enough_samples"] and has_baseline:
            covered.add((site, mode_subject(mv, mode)))
        for rule, msg in m["verdict"]:
            if rule in site_rules:
                continue
            out.append(
                Finding(
                    rule,
                    site,
                    f"model {mv} at site {site}, {mode} frames: {msg}",
                    subject=mode_subject(mv, mode),
                    details={
                        "model_version": mv,
                        "run_id": run_id,
                        "lighting": mode,
                        "n": m["n"],
                        **{k: _clean(m[k]) for k in ("psi", "js", "ks", "ks_p", "abstain_rate", "accuracy")},
                    },
                )
            )
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
    feedback = store.feedback(since=since, until=now)
    labelled = {(f.device, f.seq) for f in feedback}
    fb_ir: dict[tuple[str, int], bool | None] = {}  # the lighting of each labelled frame
    cur = store.db.conn.execute(
        "SELECT model_version, site, device, seq, label, confidence, abstain, flags, ir FROM predictions "
        "WHERE ts>=? AND ts<=?",
        (since, now),
    )
    for mv, site, dev, seq, label, conf, ab, flags, ir in cur:
        lit = None if ir is None else bool(ir)
        if (dev, seq) in labelled:
            fb_ir[(dev, seq)] = lit
        for key in ((mv, site, ""), (mv, site, dev)):
            c = cohorts.get(key)
            if c is None:
                c = cohorts[key] = Cohort(mv, site, key[2])
            c.add(label, conf, bool(ab), bool(flags and flags != "[]"), lit)
    baselines = {mv: baseline_of(mv) for mv in {k[0] for k in cohorts}}
    results, findings, covered = [], [], set()
    site_rules: dict[tuple[str, str], set[str]] = {}
    for key in sorted(cohorts, key=lambda k: (k[0], k[1], k[2] != "", k[2])):
        mv, site, dev = key
        fb = [
            f for f in feedback if f.model_version == mv and f.site == site and (not dev or f.device == dev)
        ]
        fig = figures(cohorts[key], baselines[mv], fb, acfg, fb_ir)
        rules = [r for r, _ in fig["verdict"]]
        if not dev:
            site_rules[(mv, site)] = set(rules)
            if fig["enough_samples"] and baselines[mv] is not None:
                covered.add((site, mv))
            findings += _mode_findings(fig, mv, site, run_id, set(rules), baselines[mv] is not None, covered)
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
