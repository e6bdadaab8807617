"""The evaluation page: one self-contained HTML file with inline SVG plots (no JS, no matplotlib).

Plots: confusion matrix, ROC curve, reliability diagram. Self-contained so it can sit inside a
model package, be opened from a file browser, and be served by the dashboard unchanged.
"""

from __future__ import annotations

import html
import json
from typing import Any

W = H = 320
PAD = 40


def _svg_open(label: str) -> str:
    ns = "http://www.w3.org/2000/svg"
    return f'<svg xmlns="{ns}" width="{W}" height="{H}" role="img" aria-label="{_esc(label)}">'


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _axes(title: str, xlabel: str, ylabel: str) -> list[str]:
    x0, y0, x1, y1 = PAD, H - PAD, W - 10, 20
    out = [
        _svg_open(title),
        f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="13">{_esc(title)}</text>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>',
        f'<text x="{(x0 + x1) / 2}" y="{H - 8}" text-anchor="middle" font-size="11">{_esc(xlabel)}</text>',
        f'<text x="12" y="{(y0 + y1) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {(y0 + y1) / 2})">{_esc(ylabel)}</text>',
    ]
    for t in (0.0, 0.5, 1.0):
        xt, yt = _sx(t), _sy(t)
        out.append(f'<text x="{xt}" y="{y0 + 14}" text-anchor="middle" font-size="10">{t:g}</text>')
        out.append(f'<text x="{x0 - 4}" y="{yt + 3}" text-anchor="end" font-size="10">{t:g}</text>')
    return out


def _sx(v: float) -> float:
    return round(PAD + v * (W - 10 - PAD), 2)


def _sy(v: float) -> float:
    return round(H - PAD - v * (H - PAD - 20), 2)


def confusion_svg(cm: list[list[int]], labels: list[str]) -> str:
    n = len(labels)
    cell = (W - 2 * PAD) / n
    peak = max(max(row) for row in cm) or 1
    out = [
        _svg_open("confusion matrix"),
        f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="13">Confusion matrix (rows: true)</text>',
    ]
    for i in range(n):
        out.append(
            f'<text x="{PAD - 4}" y="{PAD + (i + 0.5) * cell}" text-anchor="end" font-size="11">'
            f"{_esc(labels[i])}</text>"
        )
        out.append(
            f'<text x="{PAD + (i + 0.5) * cell}" y="{PAD + n * cell + 14}" text-anchor="middle" '
            f'font-size="11">{_esc(labels[i])}</text>'
        )
        for j in range(n):
            v = cm[i][j]
            shade = round(255 - 200 * v / peak)
            colour = f"rgb({shade},{shade},255)"
            out.append(
                f'<rect x="{PAD + j * cell}" y="{PAD + i * cell}" width="{cell}" height="{cell}" '
                f'fill="{colour}" stroke="#fff"/>'
            )
            out.append(
                f'<text x="{PAD + (j + 0.5) * cell}" y="{PAD + (i + 0.5) * cell + 4}" '
                f'text-anchor="middle" font-size="14">{v}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def roc_svg(roc: dict[str, dict[str, list[float]]], auc: float | None) -> str:
    out = _axes(
        f"ROC curve (AUC {auc:.4f})" if auc is not None else "ROC curve",
        "false positive rate",
        "true positive rate",
    )
    out.append(
        f'<line x1="{_sx(0)}" y1="{_sy(0)}" x2="{_sx(1)}" y2="{_sy(1)}" stroke="#aaa" stroke-dasharray="4"/>'
    )
    colours = ["#c0392b", "#2471a3", "#229954", "#7d3c98"]
    for k, (label, curve) in enumerate(roc.items()):
        pts = " ".join(f"{_sx(x)},{_sy(y)}" for x, y in zip(curve["fpr"], curve["tpr"], strict=True))
        out.append(
            f'<polyline fill="none" stroke="{colours[k % 4]}" stroke-width="2" points="{pts}">'
            f"<title>{_esc(label)} vs rest</title></polyline>"
        )
    out.append("</svg>")
    return "".join(out)


def reliability_svg(bins: list[dict[str, float]], ece: float) -> str:
    out = _axes(f"Reliability (ECE {ece:.4f})", "confidence", "accuracy")
    out.append(
        f'<line x1="{_sx(0)}" y1="{_sy(0)}" x2="{_sx(1)}" y2="{_sy(1)}" stroke="#aaa" stroke-dasharray="4"/>'
    )
    for b in bins:
        x, w = _sx(b["lo"]), _sx(b["hi"]) - _sx(b["lo"])
        y = _sy(b["accuracy"])
        out.append(
            f'<rect x="{x}" y="{y}" width="{max(w - 1, 1)}" height="{_sy(0) - y}" fill="#5dade2">'
            f"<title>{b['lo']:.2f}-{b['hi']:.2f}: n={b['n']}, accuracy {b['accuracy']:.3f}, "
            f"confidence {b['confidence']:.3f}</title></rect>"
        )
    out.append("</svg>")
    return "".join(out)


PERCEPTION_ROWS = (
    ("closeup_pets_right", "close-up pets right (frame pipeline)"),
    ("closeup_none_rejected", "no-pet photos rejected"),
    ("rejection_auroc", "rejection AUROC (pet evidence, whole-frame view)"),
    ("rejection_fpr_at_95_tpr", "rejection false-positive rate at 95 % true-positive rate"),
    ("scene_pets_right", "pets in 1280x720 scenes right"),
    ("grey_scene_pets_right", "the same in greyscale right"),
    ("empty_scenes_rejected", "empty scenes rejected"),
    ("closeup_abstained", "close-ups abstained"),
)


def _perception_html(p: dict[str, Any] | None) -> str:
    if not p:
        return (
            "<h2>Perception</h2><p>This model cannot reject frames without a pet (no rejection metadata).</p>"
        )
    rows = "".join(
        f"<tr><td style='text-align:left'>{_esc(text)}</td><td>"
        f"{'not measured' if p.get(key) is None else f'{p[key]:.4f}'}</td></tr>"
        for key, text in PERCEPTION_ROWS
    )
    return (
        "<h2>Perception (what a box says about frames)</h2><table>"
        f"<tr><th>figure</th><th>value</th></tr>{rows}</table>"
        f"<p>Thresholds: whole-frame view {_esc(p.get('threshold'))}, regions "
        f"{_esc(p.get('region_threshold'))}, abstain below {_esc(p.get('abstain_threshold'))}.</p>"
    )


def _decisions_html(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in d["columns"])
    body = "".join(
        f"<tr><th>{_esc(lab)}</th>{''.join(f'<td>{v}</td>' for v in row)}"
        f"<td>{d['per_class'][lab]['recall']:.4f}</td></tr>"
        for lab, row in zip(d["per_class"], d["confusion_matrix"], strict=True)
    )
    return (
        "<h2>What the box says about the test images (the gate judges these)</h2>"
        f"<p>Accuracy <b>{d['accuracy']:.4f}</b>; recall gap {d['recall_gap']:.4f}; "
        f"abstained {d['abstained']:.4f}. Rows: true label; columns: the box's outcome.</p>"
        f"<table><tr><th>true / said</th>{head}<th>recall</th></tr>{body}</table>"
    )


def render_html(version: str, metrics: dict[str, Any], gate: dict[str, Any], context: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(lab)}</td><td>{pc['precision']:.4f}</td><td>{pc['recall']:.4f}</td>"
        f"<td>{pc['f1']:.4f}</td><td>{pc['support']}</td></tr>"
        for lab, pc in metrics["per_class"].items()
    )
    verdict = "passed" if gate["passed"] else "FAILED"
    failures = "".join(f"<li>{_esc(f)}</li>" for f in gate["failures"])
    auc = metrics.get("roc_auc")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation of {_esc(version)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}.plots{{display:flex;flex-wrap:wrap;gap:16px}}
.failed{{color:#c0392b}}.passed{{color:#229954}}</style></head><body>
<h1>Model {_esc(version)}: test-split evaluation</h1>
<p>Accuracy <b>{metrics["accuracy"]:.4f}</b> on {metrics["n"]} images;
ROC AUC {auc if auc is None else f"{auc:.4f}"};
ECE {metrics["ece"]:.4f}; recall gap {metrics["recall_gap"]:.4f}.</p>
<p>Promotion gate: <b class="{"passed" if gate["passed"] else "failed"}">{verdict}</b></p><ul>{failures}</ul>
<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>
<div class="plots">{confusion_svg(metrics["confusion_matrix"], metrics["labels"])}
{roc_svg(metrics["roc"], auc)}{reliability_svg(metrics["reliability"], metrics["ece"])}</div>
{_decisions_html(metrics.get("decisions"))}
{_perception_html(metrics.get("perception"))}
<h2>Context</h2><pre>{_esc(json.dumps(context, indent=2, sort_keys=True, default=str))}</pre>
</body></html>
"""
