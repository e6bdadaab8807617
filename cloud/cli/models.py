"""``parkwatch cloud train``, ``evaluate`` and ``models list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cloud.config import DEFAULT_PATH
from cloud.packaging.lineage import ModelLineage
from shared.clitools import config_option, emit, handle_errors, json_option
from shared.textfmt import block, num, pairs, table, utc


def _box_line(m: dict[str, Any]) -> list[str]:
    """What the box says about the test images, for a model with rejection: the gate judges this."""
    d = m.get("decisions")
    if not d:
        return []
    return [
        f"  on the box (what the gate judges): accuracy {d['accuracy']:.4f}  "
        f"recall_gap {d['recall_gap']:.4f}  abstained {d['abstained']:.4f}"
    ]


def _human_train(r: dict[str, Any]) -> str:
    m = r["metrics"]
    lines = [
        f"model {r['model_version']} registered as candidate "
        f"(gate {'passed' if r['gate_passed'] else 'FAILED'})",
        f"  accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc']:.4f}  ece {m['ece']:.4f}  "
        f"recall_gap {m['recall_gap']:.4f}  (test n={m['n']})",
        *_box_line(m),
    ]
    lines += [f"  gate: {f}" for f in r["gate"]["failures"]]
    lines.append(f"  best params {pairs(r['best_params'])}")
    for t in r["trials"]:
        lines.append(
            f"    trial {t['index']}: val_acc {t['metrics']['val_accuracy']:.4f} "
            f"val_loss {t['metrics']['val_loss']:.4f} {t['duration_s']:.1f}s {pairs(t['params'])}"
        )
    timings = {k: f"{num(v, 1)} s" for k, v in (r.get("timings_s") or {}).items()}
    lines += [f"  package {r['package']}", f"  tarball {r['tarball']}", f"  timings {pairs(timings)}"]
    return "\n".join(lines)


@click.command()
@click.option("--dataset", "dataset_id", required=True, help="Dataset version id (or unique prefix).")
@click.option(
    "--search",
    "method",
    type=click.Choice(["grid", "random"]),
    default=None,
    help="Search method (default from config train.search).",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Random: number of draws; grid: cap on the grid (default: config).",
)
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("--no-progress", is_flag=True, help="No progress bars on stderr.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def train(
    dataset_id: str,
    method: str | None,
    trials: int | None,
    seed: int | None,
    no_progress: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Train on a dataset version, search hyperparameters, test, package and register a candidate."""
    from cloud.config import load
    from cloud.registry.store import Registry
    from cloud.training.trainer import TrainOptions
    from cloud.training.trainer import train as run_train

    cfg = load(config_path)
    with Registry(cfg.paths.registry_db) as reg:
        res = run_train(cfg, reg, TrainOptions(dataset_id, method, trials, seed, not no_progress))
    emit(res.to_json(), as_json, _human_train)


@click.command()
@click.argument("version")
@click.option(
    "--dataset",
    "dataset_id",
    default=None,
    help="Evaluate on this dataset's test split (default: the one the model was trained on).",
)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def evaluate(version: str, dataset_id: str | None, config_path: Path, as_json: bool) -> None:
    """Score a registered model on a test split; writes JSON + HTML under the reports folder."""
    from cloud.config import load
    from cloud.evaluation.reevaluate import evaluate_version
    from cloud.registry.store import Registry

    cfg = load(config_path)
    with Registry(cfg.paths.registry_db) as reg:
        out = evaluate_version(cfg, reg, version, dataset_id)

    def human(o: dict[str, Any]) -> str:
        m = o["metrics"]
        lines = [
            f"model {o['model_version']} on dataset {o['dataset_version'][:16]} ({o['split']}, n={m['n']})",
            f"  accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc']}  ece {m['ece']:.4f}  "
            f"recall_gap {m['recall_gap']:.4f}",
            *_box_line(m),
        ]
        for lab, pc in m["per_class"].items():
            lines.append(
                f"  {lab:<8} precision {pc['precision']:.4f} recall {pc['recall']:.4f} f1 {pc['f1']:.4f}"
            )
        lines.append(
            f"  confusion {' | '.join(' '.join(str(c) for c in row) for row in m['confusion_matrix'])}"
        )
        g = o["gate"]
        lines.append(f"  gate {'passed' if g['passed'] else 'FAILED'} ({pairs(g.get('thresholds'))})")
        lines += [f"    - {f}" for f in g["failures"]]
        lines.append(f"  report {o['report_html']}")
        return "\n".join(lines)

    emit(out, as_json, human)


@click.group()
def models() -> None:
    """Registered model versions."""


@models.command("list")
@click.option("--stage", default=None, help="Only this stage.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def models_list(stage: str | None, config_path: Path, as_json: bool) -> None:
    """Every model version, newest first."""
    from cloud.cli.common import load_existing
    from cloud.registry.store import Registry

    with Registry(load_existing(config_path, "registry").paths.registry_db) as reg:
        rows = [m.model_dump() for m in reg.list_models(stage)]

    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no models yet: run `parkwatch cloud train --dataset ID`"
        return "\n".join(
            f"{r['version']:<32} {r['stage']:<10} gate={'pass' if r['gate_passed'] else 'FAIL'} "
            f"acc={r['metrics'].get('accuracy', float('nan')):.4f} dataset={(r['dataset_id'] or '-')[:12]} "
            f"{r['created_at']}"
            for r in rows
        )

    emit(rows, as_json, human)


@models.command("show")
@click.argument("version")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def models_show(version: str, config_path: Path, as_json: bool) -> None:
    """One model version with its metrics, gate verdict, lineage, and the run's trials."""
    from cloud.cli.common import load_existing
    from cloud.evaluation.gate import recheck_gate
    from cloud.registry.store import Registry

    cfg = load_existing(config_path, "registry")
    with Registry(cfg.paths.registry_db) as reg:
        m = reg.get_model(version)
        out: dict[str, Any] = m.model_dump()
        if m.run_id:
            out["run"] = reg.get_run(m.run_id).model_dump()
            out["trials"] = [t.model_dump() for t in reg.list_trials(m.run_id)]
    # What approval checks: the stored metrics against this config's [gate], not the trainer's.
    out["gate_now"] = recheck_gate(m.metrics, cfg.gate)
    emit(out, as_json, model_text)


def _gate_line(verdict: dict[str, Any]) -> str:
    """Only the thresholds in force: optional keys left unset (None) check nothing, so listing them
    as ``-`` would bury the ones that decide the verdict (``--json`` still has every key)."""
    ok = "passed" if verdict.get("passed") else "FAILED"
    set_now = {k: v for k, v in (verdict.get("thresholds") or {}).items() if v is not None}
    return f"{ok}  ({pairs(set_now)})"


def model_text(o: dict[str, Any]) -> str:
    """``models show`` for people: sections, aligned figures, UTC times, no Python reprs."""
    lin = o.get("lineage") or {}
    recorded = ModelLineage.read(lin)
    met = o.get("metrics") or {}
    lines = [
        f"model {o['version']}",
        f"  stage          {o['stage']}"
        + (f" (since {utc(o['stage_changed_at'])})" if o.get("stage_changed_at") else ""),
        f"  created        {utc(o.get('created_at'))}",
        f"  gate (config)  {_gate_line(o['gate_now'])}" if "gate_now" in o else "",
        f"  gate (trained) {_gate_line({**(o.get('gate') or {}), 'passed': o['gate_passed']})}",
    ]
    failures = list(
        dict.fromkeys(
            (o.get("gate_now") or {}).get("failures", []) + (o.get("gate") or {}).get("failures", [])
        )
    )
    lines += [f"                 - {f}" for f in failures]
    lines.append("  metrics")
    top = {k: met[k] for k in ("n", "accuracy", "roc_auc", "ece", "recall_gap") if k in met}
    lines += block(top) if top else ["    - (not evaluated)"]
    per_class = met.get("per_class") or {}
    if per_class:
        lines += table(
            ([lab, pc.get("precision"), pc.get("recall"), pc.get("f1")] for lab, pc in per_class.items()),
            ["class", "precision", "recall", "f1"],
            indent="    ",
        )
    lines += [
        "  lineage",
        f"    dataset      {recorded.dataset_version or o.get('dataset_id') or '-'}",
        f"    run          {o.get('run_id') or recorded.run_id or '-'}",
        f"    code         {recorded.commit or '-'}" + (" (uncommitted changes)" if recorded.dirty else ""),
        f"    package      {o['package_dir']}",
        f"    tarball      {o['tarball'] or '-'}"
        + (f" (sha256 {o['tarball_sha256']})" if o.get("tarball_sha256") else ""),
    ]
    if recorded.parameters:
        lines.append("  parameters")
        lines += block(recorded.parameters)
    if recorded.parity:
        lines.append(f"  parity         {pairs(recorded.parity)}")
    if recorded.packages:
        lines.append(f"  packages       {pairs(recorded.packages)}")
    if recorded.host:
        lines.append(f"  host           {pairs(recorded.host)}")
    trials = o.get("trials") or []
    if trials:
        lines.append("  trials")
        lines += table(
            (
                [
                    t["index"],
                    pairs(t.get("metrics")),
                    f"{num(t.get('duration_s'), 1)} s",
                    pairs(t.get("params")),
                ]
                for t in trials
            ),
            ["#", "metrics", "time", "parameters"],
            indent="    ",
        )
    return "\n".join(x for x in lines if x)


@click.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--version",
    "version",
    default=None,
    help="Version name of the package (default: the builder's baseline version).",
)
@json_option
@handle_errors
def baseline(out: Path, version: str | None, as_json: bool) -> None:
    """Build the untrained baseline package into OUT/VERSION (the box's first model).

    edge.example.toml's [model] initial points at the folder install-edge.sh --model installs;
    this builds that folder without any training (ImageNet classes grouped into cat and dog).
    """
    from cloud.training.untrained import BASELINE_VERSION, build_baseline

    built = build_baseline(out, version or BASELINE_VERSION)
    result = {
        "version": built.version,
        "package": str(built.directory),
        "tarball": str(built.tarball),
        "tarball_sha256": built.tarball_sha256,
        "parity_max_abs_diff": built.parity_max_abs_diff,
    }
    emit(
        result,
        as_json,
        lambda o: (
            f"baseline package {o['version']} in {o['package']} (tarball {o['tarball']})\n"
            f"  ONNX against torch: max abs difference {o['parity_max_abs_diff']:.2g}\n"
            f"  install it as a box's first model: sudo provisioning/install-edge.sh --model {o['package']}\n"
            "  (it lands in /opt/parkwatch/models/initial, which edge.example.toml's [model] initial names)"
        ),
    )
