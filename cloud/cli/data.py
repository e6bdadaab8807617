"""``parkwatch cloud ingest`` and ``parkwatch cloud datasets list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cloud.config import DEFAULT_PATH
from shared.clitools import config_option, emit, handle_errors, json_option


def _human_ingest(r: dict[str, Any]) -> str:
    lines = [
        f"dataset {r['dataset_version']} ({'new' if r['new'] else 'unchanged, already registered'})",
        f"  source   {r['source']}",
    ]
    kept = r.get("kept_source")
    if kept and kept != r["source"]:
        lines.append(
            f"  kept     {kept} (where this data was first ingested from: training and lineage keep "
            "reading it there; this folder is recorded as another source)"
        )
    for split in ("train", "test", "total"):
        lines.append(f"  {split:<8} " + ", ".join(f"{k}={v}" for k, v in r["counts"][split].items()))
    lines.append(f"  duplicates dropped: {len(r['duplicates'])}")
    lines += [f"    {d['path']} = {d['kept']}" for d in r["duplicates"][:20]]
    if len(r["duplicates"]) > 20:
        lines.append(f"    ... and {len(r['duplicates']) - 20} more (--json lists all)")
    lines.append(f"  quarantined: {len(r['quarantined'])}")
    lines += [f"    {q['path']}: {q['reason']} ({q['detail']})" for q in r["quarantined"][:50]]
    if len(r["quarantined"]) > 50:
        lines.append(f"    ... and {len(r['quarantined']) - 50} more (--json lists all)")
    lines.append(f"  manifest {r['manifest']}")
    return "\n".join(lines)


@click.command()
@click.argument("source", type=click.Path(path_type=Path, file_okay=False))
@config_option(DEFAULT_PATH)
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@json_option
@handle_errors
def ingest(source: Path, config_path: Path, no_progress: bool, as_json: bool) -> None:
    """Validate, de-duplicate, split and register the data lake SOURCE (one sub-folder per label)."""
    from cloud.config import load
    from cloud.data.ingest import ingest as run_ingest
    from cloud.registry.store import Registry

    cfg = load(config_path)
    with Registry(cfg.paths.registry_db) as reg:
        result = run_ingest(source, reg, cfg.paths.datasets_dir, cfg.ingest, show_progress=not no_progress)
    emit(result.to_json(), as_json, _human_ingest)


@click.group()
def datasets() -> None:
    """Registered dataset versions."""


@datasets.command("list")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def datasets_list(config_path: Path, as_json: bool) -> None:
    """Every dataset version, newest first."""
    from cloud.cli.common import load_existing
    from cloud.registry.store import Registry

    with Registry(load_existing(config_path, "registry").paths.registry_db) as reg:
        rows = [d.model_dump() for d in reg.list_datasets()]

    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no datasets yet: run `parkwatch cloud ingest SOURCE`"
        return "\n".join(
            f"{r['id'][:16]}  {r['created_at']}  files={r['n_files']}  "
            f"train={sum(r['counts']['train'].values())} test={sum(r['counts']['test'].values())}  "
            f"dup={r['duplicates']} quar={r['quarantined']}  {r['source']}"
            for r in rows
        )

    emit(rows, as_json, human)


@datasets.command("show")
@click.argument("dataset_id")
@config_option(DEFAULT_PATH)
@click.option("--files", "with_files", is_flag=True, help="Also list every file (hash, label, split, path).")
@json_option
@handle_errors
def datasets_show(dataset_id: str, config_path: Path, with_files: bool, as_json: bool) -> None:
    """One dataset version (id or unique prefix): counts, quarantine, duplicates, models trained on it."""
    from cloud.cli.common import load_existing
    from cloud.registry.store import Registry

    with Registry(load_existing(config_path, "registry").paths.registry_db) as reg:
        d = reg.get_dataset(dataset_id)
        out: dict[str, Any] = d.model_dump()
        out["quarantine"] = [q.model_dump() for q in reg.dataset_quarantine(d.id)]
        out["duplicate_files"] = [x.model_dump() for x in reg.dataset_duplicates(d.id)]
        out["runs"] = [r.model_dump() for r in reg.list_runs(d.id)]
        out["models"] = [m.version for m in reg.list_models() if m.dataset_id == d.id]
        out["sources"] = reg.dataset_sources(d.id)
        if with_files:
            out["files"] = [f.model_dump() for f in reg.dataset_files(d.id)]

    def human(o: dict[str, Any]) -> str:
        lines = [
            f"dataset {o['id']}",
            f"  source     {o['source']}",
            *(
                f"  also from  {s['source']} (same data, ingested {s['first_ingested_at']})"
                for s in o["sources"][1:]
            ),
            f"  created    {o['created_at']}",
            f"  labels     {', '.join(o['labels'])}",
            f"  manifest   {o['manifest_path']}",
            f"  params     {o['params']}",
        ]
        for split in ("train", "test", "total"):
            lines.append(f"  {split:<10} " + ", ".join(f"{k}={v}" for k, v in o["counts"][split].items()))
        lines.append(f"  duplicates {o['duplicates']}, quarantined {o['quarantined']}")
        lines += [f"    {q['path']}: {q['reason']} ({q['detail']})" for q in o["quarantine"]]
        lines.append(f"  runs       {len(o['runs'])}; models: {', '.join(o['models']) or 'none'}")
        return "\n".join(lines)

    emit(out, as_json, human)
