"""The analysis report: one JSON (for machines and the dashboard) and one self-contained HTML page."""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from cloud.analysis import svg
from cloud.fleet.records import DriftResult
from shared.atomic import atomic_write_json, atomic_write_text


def drift_state(d: DriftResult | Mapping[str, Any]) -> tuple[str, str]:
    """One site-level drift row (stored, or fresh from the analysis) as "drift", "no drift" or
    "not judged" with why. A row without a baseline (the untrained baseline model) or with too few
    predictions was never compared: it must not read as "no drift"."""
    if isinstance(d, DriftResult):
        drifted, reasons, det = bool(d.drifted), d.reasons, d.details
    else:
        drifted, reasons, det = bool(d.get("drifted")), d.get("reasons") or [], d.get("details") or {}
    if drifted:
        return "drift", "; ".join(reasons) or "over a threshold"
    if det.get("baseline") is None:
        return "not judged", "no baseline"
    if det.get("enough_samples") is False:
        return "not judged", "too few predictions"
    return "no drift", ""


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return escape(str(v))


def mode_verdict(m: dict[str, Any], has_baseline: bool, min_samples: int | None = None) -> str:
    """DRIFT, no drift, or why one lighting mode's frames were not judged."""
    if m.get("verdict"):
        return "DRIFT"
    if not has_baseline:
        return "no baseline (not judged)"
    if not m.get("enough_samples"):
        below = f"fewer than {min_samples}" if min_samples else "too few"
        return f"{below} frames (not judged)"
    return "no drift"


def outcome_text(det: dict[str, Any]) -> str:
    """``cat 120 · dog 80 · none 300 · abstain 12``: pets, none and abstentions each apart."""
    c = det.get("counts") or {}
    parts = [f"{k} {v}" for k, v in (c.get("pets") or {}).items()]
    return " · ".join([*parts, f"none {c.get('none', 0)}", f"abstain {c.get('abstain', 0)}"])


def _modes_html(d: dict[str, Any], min_samples: int | None) -> list[str]:
    det = d["details"]
    modes = det.get("modes") or {}
    unknown = det.get("lighting_unknown") or 0
    if not modes:
        return ["<p class='note'>Lighting (day/IR) not reported by these boxes: no per-mode figures.</p>"]
    out = [
        "<h4>Per lighting mode</h4><table><tr><th>mode</th><th>n</th><th>verdict</th><th>outcomes</th>"
        "<th>none share</th><th>abstain</th><th>K-S</th><th>K-S p</th><th>PSI (pets)</th>"
        "<th>est. accuracy</th><th>accuracy (labels)</th></tr>"
    ]
    for mode, m in modes.items():
        verdict = mode_verdict(m, det.get("baseline") is not None, min_samples)
        cls = "bad" if verdict == "DRIFT" else "note" if "not judged" in verdict else "ok"
        psi = _fmt(m.get("psi")) if m.get("baseline_for_mode") else "– (no mode baseline)"
        out.append(
            f"<tr class='mode-{escape(mode)}'><td>{escape(mode)}</td><td>{m['n']}</td>"
            f"<td class='{cls}'>{verdict}</td><td>{escape(outcome_text(m))}</td>"
            f"<td>{_fmt(m.get('none_share'), True)}</td><td>{_fmt(m.get('abstain_rate'), True)}</td>"
            f"<td>{_fmt(m.get('ks'))}</td><td>{_fmt(m.get('ks_p'))}</td><td>{psi}</td>"
            f"<td>{_fmt(m.get('est_accuracy'), True)} (estimate)</td>"
            f"<td>{_fmt(m.get('accuracy'), True)} (n={m.get('n_labels', 0)})</td></tr>"
        )
    out.append("</table>")
    for mode, m in modes.items():
        if m.get("verdict"):
            out.append(
                "<ul>"
                + "".join(f"<li>{escape(mode)}: {escape(msg)}</li>" for _, msg in m["verdict"])
                + "</ul>"
            )
    if unknown:
        out.append(
            f"<p class='note'>{unknown} frame(s) of unknown lighting (older boxes) count only above.</p>"
        )
    return out


def render_html(report: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report["ts"]))
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>parkwatch analysis "
        f"{escape(report['run_id'])}"
        "</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.bad{background:#fdd}.ok{background:#dfd}"
        ".note{color:#666;font-size:12px}</style></head><body>",
        f"<h1>Fleet analysis {escape(report['run_id'])}</h1>",
        f"<p>{when}; window {report['window_s'] / 3600:.1f} h; {report['totals']['predictions']} "
        "predictions, "
        f"{report['totals']['devices']} devices, {len(report['alerts']['opened'])} new alert(s).</p>",
        f"<p id='totals-outcomes'>Outcomes: {escape(outcome_text({'counts': report['totals']}))}</p>"
        if "none" in report["totals"]
        else "",
        "<h2>Device health</h2><table><tr><th>device</th><th>site</th><th>state</th><th>reasons</th></tr>",
    ]
    for h in report["health"]:
        cls = "ok" if h["state"] == "ok" else "bad"
        out.append(
            f"<tr class='{cls}'><td>{escape(h['device'])}</td><td>{escape(h['site'])}</td>"
            f"<td>{h['state']}</td>"
            f"<td>{escape('; '.join(h['reasons']))}</td></tr>"
        )
    out.append("</table><h2>Drift and performance (site level)</h2>")
    out.append(
        "<p class='note'>Estimated accuracy is computed from confidence (CBPE-style) and is an estimate, "
        "not a measurement; measured accuracy needs operator labels.</p>"
    )
    for d in report["drift"]:
        if d["device"]:
            continue
        det = d["details"]
        base = det.get("baseline")
        state, why = drift_state(d)
        if why == "too few predictions":
            why += f" (n={d['n']})"  # how far short, as the dashboard badge says too
        cls, verdict = {
            "drift": ("bad", "DRIFT"),
            "not judged": ("note", f"{why} (drift not judged)"),
        }.get(state, ("ok", "no drift"))
        out.append(
            f"<h3>model {escape(d['model_version'])} at {escape(d['site'])} "
            f"<span class='{cls}'>{verdict}</span></h3>"
        )
        out.append(
            "<table><tr><th>n</th><th>PSI</th><th>JS</th><th>K-S</th><th>K-S p</th><th>Wasserstein</th>"
            "<th>abstain</th><th>flagged</th><th>est. accuracy</th><th>accuracy "
            "(labels)</th><th>recall gap</th></tr>"
            f"<tr><td>{d['n']}</td><td>{_fmt(d['psi'])}</td><td>{_fmt(d['js'])}</td><td>{_fmt(d['ks'])}</td>"
            f"<td>{_fmt(d['ks_p'])}</td><td>{_fmt(d['wasserstein'])}</td>"
            f"<td>{_fmt(d['abstain_rate'], True)}</td>"
            f"<td>{_fmt(d['flag_rate'], True)}</td><td>{_fmt(d['est_accuracy'], True)} (estimate)</td>"
            f"<td>{_fmt(d['accuracy'], True)} "
            f"(n={d['n_labels']})</td><td>{_fmt(d['recall_gap'], True)}</td></tr></table>"
        )
        if d["reasons"]:
            out.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in d["reasons"]) + "</ul>")
        out.append(
            f"<p>Outcomes: {escape(outcome_text(det))} (none = sure there is no pet; abstain = unsure)"
            + (
                f"; none share {_fmt(det.get('none_share'), True)}"
                + (
                    f" (test set {_fmt(det.get('baseline_none_share'), True)})"
                    if det.get("baseline_none_share") is not None
                    else ""
                )
                if det.get("none_share") is not None
                else ""
            )
            + "</p>"
        )
        out += _modes_html(d, (report.get("thresholds") or {}).get("min_samples"))
        if base is None:
            out.append(
                "<p class='note'>No test-set baseline for this model version: figures only, no "
                "drift verdict.</p>"
            )
            continue
        out.append(svg.bars({"baseline": base["class_mix"], "live": det["class_mix"]}, "predicted class mix"))
        out.append(
            svg.histograms(
                base["confidence_hist"]["edges"],
                {"baseline": base["confidence_hist"]["counts"], "live": det["confidence_hist"]["counts"]},
                "confidence",
            )
        )
    acc = report.get("accuracy_over_time") or {}
    if acc:
        out.append("<h2>Labelled accuracy over time</h2>")
        for mv, pts in acc.items():
            out.append(svg.line([(p["ts"], p["accuracy"]) for p in pts], f"model {mv}: accuracy per day"))
    out.append(
        "<h2>Alerts opened by this run</h2><ul>"
        + "".join(
            f"<li>[{escape(a['severity'])}] {escape(a['rule'])}: {escape(a['message'])} "
            f"({escape(a['id'])})</li>"
            for a in report["alerts"]["opened"]
        )
        + "</ul></body></html>"
    )
    return "\n".join(out)


def write(report: dict[str, Any], reports_dir: Path) -> dict[str, str]:
    """``analysis-<run>.json/.html`` plus ``analysis-latest.*`` copies, each written atomically."""
    stem = reports_dir / f"analysis-{report['run_id']}"
    html = render_html(report)
    paths = {"json": str(stem.with_suffix(".json")), "html": str(stem.with_suffix(".html"))}
    report["files"] = paths
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["html"], html)
    atomic_write_json(reports_dir / "analysis-latest.json", report)
    atomic_write_text(reports_dir / "analysis-latest.html", html)
    return paths
