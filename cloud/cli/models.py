"""``parkwatch cloud train``, ``evaluate`` and ``models list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cloud.config import DEFAULT_PATH
from shared.clitools import config_option, emit, handle_errors, json_option


def _human_train(r: dict[str, Any]) -> str:
    m = r["metrics"]
    lines = [
        f"model {r['model_version']} registered as candidate "
        f"(gate {'passed' if r['gate_passed'] else 'FAILED'})",
        f"  accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc']:.4f}  ece {m['ece']:.4f}  "
        f"recall_gap {m['recall_gap']:.4f}  (test n={m['n']})",
    ]
    lines += [f"  gate: {f}" for f in r["gate"]["failures"]]
    lines.append(f"  best params {r['best_params']}")
    for t in r["trials"]:
        lines.append(
            f"    trial {t['index']}: val_acc {t['metrics']['val_accuracy']:.4f} "
            f"val_loss {t['metrics']['val_loss']:.4f} {t['duration_s']:.1f}s {t['params']}"
        )
    lines += [f"  package {r['package']}", f"  tarball {r['tarball']}", f"  timings {r['timings_s']}"]
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
    with Registry(cfg.registry_db) as reg:
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
    from cloud.evaluation.service import evaluate_version
    from cloud.registry.store import Registry

    cfg = load(config_path)
    with Registry(cfg.registry_db) as reg:
        out = evaluate_version(cfg, reg, version, dataset_id)

    def human(o: dict[str, Any]) -> str:
        m = o["metrics"]
        lines = [
            f"model {o['model_version']} on dataset {o['dataset_version'][:16]} ({o['split']}, n={m['n']})",
            f"  accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc']}  ece {m['ece']:.4f}  "
            f"recall_gap {m['recall_gap']:.4f}",
        ]
        for lab, pc in m["per_class"].items():
            lines.append(
                f"  {lab:<8} precision {pc['precision']:.4f} recall {pc['recall']:.4f} f1 {pc['f1']:.4f}"
            )
        lines.append(f"  confusion {m['confusion_matrix']}")
        lines.append(f"  gate {'passed' if o['gate']['passed'] else 'FAILED'} {o['gate']['failures']}")
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

    with Registry(load_existing(config_path, "registry").registry_db) as reg:
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
    from cloud.registry.store import Registry

    with Registry(load_existing(config_path, "registry").registry_db) as reg:
        m = reg.get_model(version)
        out: dict[str, Any] = m.model_dump()
        if m.run_id:
            out["run"] = reg.get_run(m.run_id).model_dump()
            out["trials"] = [t.model_dump() for t in reg.list_trials(m.run_id)]

    def human(o: dict[str, Any]) -> str:
        lin = o["lineage"]
        met = o["metrics"]
        lines = [
            f"model {o['version']}  stage {o['stage']}  gate {'passed' if o['gate_passed'] else 'FAILED'}",
            f"  created   {o['created_at']}",
            f"  package   {o['package_dir']}",
            f"  tarball   {o['tarball']} (sha256 {o['tarball_sha256']})",
            f"  dataset   {lin.get('dataset_version')}",
            f"  code      {lin.get('code', {}).get('commit')} dirty={lin.get('code', {}).get('dirty')}",
            f"  params    {lin.get('parameters')}",
            f"  parity    {lin.get('parity')}",
            f"  metrics   accuracy={met.get('accuracy')} roc_auc={met.get('roc_auc')} ece={met.get('ece')} "
            f"recall_gap={met.get('recall_gap')}",
        ]
        lines += [f"  gate      {f}" for f in o["gate"].get("failures", [])]
        lines.append(f"  packages  {lin.get('packages')}")
        lines.append(f"  host      {lin.get('host')}")
        for t in o.get("trials", []):
            lines.append(f"  trial {t['index']}: {t['metrics']} {t['duration_s']}s {t['params']}")
        return "\n".join(lines)

    emit(out, as_json, human)
