"""Drift and quality per model and site: the analysis job's drift figures against their
thresholds, class mix against the baseline, and accuracy over time from labelled feedback.

The figures come from the analysis domain (``cloud.analysis.drift.performance`` and
``cloud.analysis.job.accuracy_over_time``), the same code the scheduled analysis runs, so the
page and the analysis report never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.analysis.report import drift_state
from cloud.dashboard.charts import Series, bar_chart, line_chart
from cloud.dashboard.web import render, require, services
from cloud.fleet.outcomes import ABSTAIN, LEGACY_NONE, NONE, PETS
from cloud.fleet.records import DriftResult, Feedback

router = APIRouter()
DAY = 86400.0


def _mix(details: dict[str, Any], *keys: str) -> dict[str, float] | None:
    for k in keys:
        v = details.get(k)
        if isinstance(v, dict) and v and all(isinstance(x, (int, float)) for x in v.values()):
            return {str(a): float(b) for a, b in v.items()}
    return None


@router.get("/quality")
def quality_page(request: Request, model: str = "", site: str = "") -> Response:
    require(request)
    svc = services(request)
    store = svc.get_fleet()
    a = svc.cfg.analysis
    results = store.drift_results(model_version=model or None, site=site or None, limit=2000)
    latest: dict[tuple[str, str], DriftResult] = {}
    history: dict[tuple[str, str], list[DriftResult]] = defaultdict(list)
    for r in results:
        if r.device:
            continue
        key = (r.model_version, r.site)
        latest.setdefault(key, r)
        history[key].append(r)
    panels = []
    for key, r in sorted(latest.items()):
        det = r.details or {}
        observed = _mix(det, "class_mix")
        baseline = _mix(det.get("baseline") or {}, "class_mix")
        cats = sorted(set(observed or {}) | set(baseline or {}))
        mix_groups: list[tuple[str, dict[str, float]]] = [
            (name, mix) for name, mix in (("baseline", baseline), ("observed", observed)) if mix
        ]
        mix_chart = (
            bar_chart(
                mix_groups,
                title=f"class mix {key[0]} at {key[1]}",
                categories=cats,
            )
            if cats
            else None
        )
        trend = line_chart(
            [
                Series("PSI", [(h.ts, h.psi) for h in history[key] if h.psi is not None]),
                Series("JS distance", [(h.ts, h.js) for h in history[key] if h.js is not None]),
            ],
            title=f"drift over time {key[0]} at {key[1]}",
            y_min=0,
            thresholds=[("PSI limit", a.psi_threshold), ("JS limit", a.js_threshold)],
        )
        state, why = drift_state(r)
        panels.append(
            {
                "model": key[0],
                "site": key[1],
                "r": r,
                "state": state,
                "why": why,
                "mix_chart": mix_chart,
                "trend": trend,
            }
        )
    from cloud.analysis.drift import performance
    from cloud.analysis.job import accuracy_over_time

    fb_rows = store.feedback(model_version=model or None, site=site or None)
    per_model: dict[str, list[Feedback]] = defaultdict(list)
    for row in fb_rows:
        per_model[row.model_version].append(row)
    over_time = accuracy_over_time(store, bucket_s=DAY)
    feedback = []
    for mv, rows in sorted(per_model.items()):
        # Pets first, then none: the confusion matrix reads cat / dog / none like the labelling buttons.
        seen = {r.label for r in rows} | {r.predicted for r in rows}
        classes = [*sorted((seen | set(PETS)) - {ABSTAIN, NONE, LEGACY_NONE}), NONE]
        s = performance(rows, classes)
        s.update(
            model=mv,
            n=len(rows),
            none=sum(r.label == NONE for r in rows),
            abstained=sum(r.predicted == ABSTAIN for r in rows),
        )
        s["chart"] = line_chart(
            [Series("labelled accuracy", [(b["ts"], b["accuracy"] * 100) for b in over_time.get(mv, [])])],
            title=f"accuracy from labels, {mv}",
            unit="%",
            y_min=0,
            y_max=100,
        )
        recall = {k: v for k, v in s["recall"].items() if v is not None}
        s["recall_chart"] = (
            bar_chart([("recall", recall)], title=f"recall per class, {mv}", categories=list(recall))
            if recall
            else None
        )
        feedback.append(s)
    return render(
        request,
        "quality.html.j2",
        title="Drift & quality",
        panels=panels,
        feedback=feedback,
        thresholds=a,
        model=model,
        site=site,
        labels_total=len(fb_rows),
    )
