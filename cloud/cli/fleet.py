"""``parkwatch cloud analyze | label | lineage | alerts | health``: fleet monitoring and governance.

Each command is a thin shell over the same service functions the dashboard calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cloud.config import DEFAULT_PATH
from shared.clitools import config_option, emit, handle_errors, json_option


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{time.time() - ts:.0f} s ago"


def _human_report(r: dict[str, Any]) -> str:
    lines = [
        f"analysis {r['run_id']}: {r['totals']['predictions']} predictions, {r['totals']['devices']} devices"
    ]
    for d in r["drift"]:
        if d["device"]:
            continue
        figs = ", ".join(f"{k} {d[k]:.3f}" for k in ("psi", "js", "ks") if d[k] is not None)
        est = f"{d['est_accuracy']:.1%} (estimate)" if d["est_accuracy"] is not None else "–"
        lines.append(
            f"  {d['model_version']} @ {d['site']}: n={d['n']} {figs}; est. accuracy {est}; "
            f"{'DRIFT' if d['drifted'] else 'ok'}"
        )
        lines += [f"      {x}" for x in d["reasons"]]
    lines.append(f"alerts opened: {len(r['alerts']['opened'])}, resolved: {len(r['alerts']['resolved'])}")
    lines += [f"  [{a['severity']}] {a['id']} {a['rule']}: {a['message']}" for a in r["alerts"]["opened"]]
    if r.get("files"):
        lines.append(f"report: {r['files']['html']}")
    return "\n".join(lines)


@click.command()
@config_option(DEFAULT_PATH)
@click.option("--window", "window_s", type=float, default=None, help="Seconds of predictions to analyse.")
@click.option("--no-alerts", is_flag=True, help="Compute and report only; raise no alerts, run no actions.")
@json_option
@handle_errors
def analyze(config_path: Path, window_s: float | None, no_alerts: bool, as_json: bool) -> None:
    """Run the drift, performance and health analysis now; write the JSON and HTML report."""
    from cloud.analysis.job import open_governor, run_analysis
    from cloud.config import load
    from cloud.fleet.store import FleetStore

    cfg = load(config_path)
    if window_s is not None:
        cfg = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(update={"window_s": window_s})})
    gov = None if no_alerts else open_governor(cfg, actor="parkwatch-analyze")
    try:
        with FleetStore(cfg.fleet_db) as fs:
            rep = run_analysis(cfg, fs, gov)
    finally:
        if gov is not None and gov.publisher is not None:
            gov.publisher.close()
    emit(rep, as_json, _human_report)


@click.command()
@click.argument("prediction_id", required=False)
@click.option("--snapshot", help="Label the prediction that kept this snapshot.")
@click.option(
    "--as",
    "label",
    type=click.Choice(["cat", "dog", "neither"]),
    required=True,
    help="What the frame really shows.",
)
@click.option("--actor", required=True, envvar="PARKWATCH_ACTOR", help="Who says so (audited).")
@click.option("--comment", default=None)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def label(
    prediction_id: str | None,
    snapshot: str | None,
    label: str,
    actor: str,
    comment: str | None,
    config_path: Path,
    as_json: bool,
) -> None:
    """Record ground truth for PREDICTION_ID (DEVICE:SEQ) or --snapshot ID."""
    from cloud.config import load
    from cloud.fleet.feedback import label_prediction
    from cloud.fleet.store import FleetStore
    from cloud.registry.audit import AuditLog

    cfg = load(config_path)
    with FleetStore(cfg.fleet_db) as fs:
        row = label_prediction(
            fs,
            label,
            actor,
            prediction_id=prediction_id,
            snapshot=snapshot,
            comment=comment,
            audit=AuditLog(cfg.registry_db),
        )
    emit(
        row,
        as_json,
        lambda r: f"{r['prediction_id']}: predicted {r['predicted']}, labelled {r['label']} by {r['actor']}",
    )


def _human_lineage(r: dict[str, Any]) -> str:
    lines = []
    if "prediction" in r:
        p = r["prediction"]
        lines.append(
            f"prediction {p['id']}: {p['label']} ({p['confidence']:.2f}) camera {p['camera']} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(p['ts']))} UTC, site {p['site']}"
        )
    m = r.get("model", {})
    lines.append(
        f"model {r['model_version']}: stage {m.get('stage')}, gate "
        f"{'passed' if m.get('gate_passed') else 'failed'}"
    )
    run = r.get("training_run")
    if run:
        lines.append(f"  training run {run['id']} ({run['status']}), best params {run.get('best_params')}")
    if r.get("parameters"):
        lines.append(f"  parameters {r['parameters']}")
    ds = r.get("dataset")
    if ds:
        lines.append(f"  dataset {ds['id']}: {ds['n_files']} files from {ds['source']}")
    if r.get("code"):
        lines.append(f"  code {r['code']}")
    for a in r.get("approvals", []):
        lines.append(f"  approval: {a}")
    for ro in r.get("rollouts", []):
        lines.append(f"  rollout {ro['kind']} to {ro['group']} by {ro['actor']}: {ro['status']}")
    lines += [f"  (missing: {x})" for x in r.get("missing", [])]
    return "\n".join(lines)


@click.command()
@click.argument("ref")
@click.option("--no-files", is_flag=True, help="Leave out the dataset's file list.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def lineage(ref: str, no_files: bool, config_path: Path, as_json: bool) -> None:
    """Where REF (a prediction DEVICE:SEQ or a MODEL_VERSION) came from."""
    from cloud.config import load
    from cloud.lineage import lineage as get_lineage

    emit(get_lineage(load(config_path), ref, with_files=not no_files), as_json, _human_lineage)


@click.group()
def alerts() -> None:
    """List, acknowledge and resolve alerts."""


def _human_alerts(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no alerts"
    return "\n".join(
        f"{a['id']}  {a['state']:<12} {a['severity']:<8} {a['rule']:<22} {a['message']}" for a in rows
    )


@alerts.command("list")
@click.option("--state", type=click.Choice(["open", "acknowledged", "resolved"]), default=None)
@click.option("--site", default=None)
@click.option("--rule", default=None)
@click.option("--limit", type=int, default=100)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def alerts_list(
    state: str | None, site: str | None, rule: str | None, limit: int, config_path: Path, as_json: bool
) -> None:
    """Alerts, newest first."""
    from cloud.config import load
    from cloud.governance.alerts import AlertStore

    cfg = load(config_path)
    with AlertStore(cfg.fleet_db) as st:
        emit(st.list(state=state, site=site, rule=rule, limit=limit), as_json, _human_alerts)


def _transition(
    which: str, alert_id: str, actor: str, comment: str | None, config_path: Path, as_json: bool
) -> None:
    from cloud.config import load
    from cloud.governance.alerts import AlertStore
    from cloud.governance.engine import ack_alert, resolve_alert
    from cloud.governance.notify import AlertPublisher
    from cloud.registry.audit import AuditLog

    cfg = load(config_path)
    pub = AlertPublisher(cfg.mqtt, f"{cfg.governance.publish_client_id}-cli", timeout_s=3.0)
    fn = ack_alert if which == "ack" else resolve_alert
    try:
        with AlertStore(cfg.fleet_db) as st:
            a = fn(st, alert_id, actor, comment, audit=AuditLog(cfg.registry_db), publisher=pub)
    finally:
        pub.close()
    emit(a, as_json, lambda x: f"{x['id']} {x['state']} by {actor}")


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--actor", required=True, envvar="PARKWATCH_ACTOR")
@click.option("--comment", default=None)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def alerts_ack(alert_id: str, actor: str, comment: str | None, config_path: Path, as_json: bool) -> None:
    """Acknowledge ALERT_ID: someone is on it."""
    _transition("ack", alert_id, actor, comment, config_path, as_json)


@alerts.command("resolve")
@click.argument("alert_id")
@click.option("--actor", required=True, envvar="PARKWATCH_ACTOR")
@click.option("--comment", default=None)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def alerts_resolve(alert_id: str, actor: str, comment: str | None, config_path: Path, as_json: bool) -> None:
    """Resolve ALERT_ID: fixed, or not a problem."""
    _transition("resolve", alert_id, actor, comment, config_path, as_json)


@click.command()
@click.option("--device", default=None, help="One device, with its gaps and recent status changes.")
@click.option("--check", is_flag=True, help="Re-evaluate health now (no alerts) instead of the stored state.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def health(device: str | None, check: bool, config_path: Path, as_json: bool) -> None:
    """Device health: state, reasons, last seen, model and update state."""
    from cloud.analysis.job import run_health
    from cloud.config import load
    from cloud.fleet.store import FleetStore

    cfg = load(config_path)
    with FleetStore(cfg.fleet_db) as fs:
        if check:
            run_health(cfg, fs, None)
        if device:
            d = fs.device(device)
            d["gaps"] = fs.gaps(device)
            d["status_events"] = fs.status_events(device, limit=10)
            emit(d, as_json)
            return
        rows = fs.devices()
    emit(
        rows,
        as_json,
        lambda rs: (
            "\n".join(
                f"{d['device']:<20} {d['site']:<12} {(d['health'] or 'unchecked'):<9} seen "
                f"{_ago(d['last_seen']):<12} "
                f"model {d['model_version'] or '-'} update {d['update_state'] or '-'}  "
                f"{'; '.join(d['health_reasons'] or [])}"
                for d in rs
            )
            or "no devices have reported yet"
        ),
    )


def _human_inbox(r: dict[str, Any]) -> str:
    lines = ["ingest workers (acknowledged, not yet in the fleet tables):"]
    for w in r["workers"]:
        if w.get("error"):
            lines.append(f"  {w['worker']:<32} UNREADABLE: {w['error']}")
            continue
        age = "-" if w["oldest_age_s"] is None else f"{w['oldest_age_s']:.0f} s"
        lines.append(f"  {w['worker']:<32} backlog {w['backlog']:>7}  oldest waiting {age}")
    if not r["workers"]:
        lines.append("  none yet (ingest has not run with this data_dir)")
    lines.append(f"refused by validation (dead letters, newest first; {r['dead_letters_total']} kept):")
    for d in r["dead_letters"]:
        lines.append(f"  #{d['id']} {_ago(d['received_ts'])} {d['kind']:<18} {d['reason']}")
    if not r["dead_letters"]:
        lines.append("  none")
    return "\n".join(lines)


@click.command()
@click.option(
    "--dead-letters", "limit", default=10, show_default=True, help="How many refused messages to list."
)
@click.option(
    "--drain",
    "drain",
    metavar="WORKER",
    default=None,
    help="Apply a worker's inbox now, here (one whose client_id was renamed or that no longer runs). "
    "Waits while that worker's own materializer holds it.",
)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def inbox(limit: int, drain: str | None, config_path: Path, as_json: bool) -> None:
    """Ingest backlog per worker, and the messages validation refused (with the payload in --json)."""
    import time

    from cloud.config import load
    from cloud.fleet.errors import NotFound
    from cloud.fleet.inbox import inbox_path, inbox_states
    from cloud.fleet.materialize import Materializer
    from cloud.fleet.store import FleetStore

    cfg = load(config_path)
    if drain is not None:
        if not inbox_path(cfg.data_dir, drain).exists():
            known = ", ".join(str(s["worker"]) for s in inbox_states(cfg.data_dir, time.time())) or "none"
            raise NotFound(f"no inbox for worker {drain!r} under {cfg.data_dir}; known workers: {known}")
        m = Materializer(cfg, drain, lock_wait_s=5.0)
        try:
            while m.step():
                pass
            m.flush_counters()
        finally:
            m.close()
    with FleetStore(cfg.fleet_db) as fs:
        letters = fs.dead_letters(limit)
        total = int(fs.query("SELECT count(*) AS n FROM dead_letters")[0]["n"])
    r = {
        "workers": inbox_states(cfg.data_dir, time.time()),
        "dead_letters": letters,
        "dead_letters_total": total,
    }
    emit(r, as_json, _human_inbox)
