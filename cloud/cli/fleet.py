"""``parkwatch cloud analyze | label | lineage | alerts | health``: fleet monitoring and governance.

Each command is a thin shell over the same service functions the dashboard calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cloud.cli.common import ACTOR, PositiveSeconds, load_existing
from cloud.config import DEFAULT_PATH
from cloud.governance.rules import RULES
from shared.clitools import config_option, emit, handle_errors, json_option
from shared.textfmt import block, pairs, table, utc


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{time.time() - ts:.0f} s ago"


def _human_report(r: dict[str, Any]) -> str:
    lines = [
        f"analysis {r['run_id']}: {r['totals']['predictions']} predictions, {r['totals']['devices']} devices"
    ]
    if "none" in r["totals"]:
        from cloud.analysis.report import outcome_text

        lines[0] += f" ({outcome_text({'counts': r['totals']})})"
    min_samples = (r.get("thresholds") or {}).get("min_samples")
    for d in r["drift"]:
        if d["device"]:
            continue
        figs = ", ".join(f"{k} {d[k]:.3f}" for k in ("psi", "js", "ks") if d[k] is not None)
        est = f"{d['est_accuracy']:.1%} (estimate)" if d["est_accuracy"] is not None else "–"
        lines.append(
            f"  {d['model_version']} @ {d['site']}: n={d['n']}{' ' + figs if figs else ''}; "
            f"est. accuracy {est}; {_verdict(d, min_samples)}"
        )
        lines += [f"      {x}" for x in d["reasons"]]
        lines += _human_modes(d, min_samples)
    lines.append(f"alerts opened: {len(r['alerts']['opened'])}, resolved: {len(r['alerts']['resolved'])}")
    lines += [f"  [{a['severity']}] {a['id']} {a['rule']}: {a['message']}" for a in r["alerts"]["opened"]]
    if r.get("files"):
        lines.append(f"report: {r['files']['html']}")
    return "\n".join(lines)


def _human_modes(d: dict[str, Any], min_samples: int | None) -> list[str]:
    """The outcome counts and one line per lighting mode (day / ir) under a cohort."""
    from cloud.analysis.report import mode_verdict, outcome_text

    det = d.get("details") or {}
    lines = [f"      outcomes: {outcome_text(det)}"] if det.get("counts") else []
    for mode, m in (det.get("modes") or {}).items():
        figs = ", ".join(f"{k} {m[k]:.3f}" for k in ("ks",) if m.get(k) is not None)
        est = f"{m['est_accuracy']:.1%} (estimate)" if m.get("est_accuracy") is not None else "–"
        lines.append(
            f"    {mode}: n={m['n']}{' ' + figs if figs else ''}; {outcome_text(m)}; est. accuracy {est}; "
            f"{mode_verdict(m, det.get('baseline') is not None, min_samples)}"
        )
        lines += [f"      {msg}" for _, msg in m.get("verdict") or []]
    if det.get("lighting_unknown"):
        lines.append(f"    lighting not reported: {det['lighting_unknown']} frame(s)")
    return lines


def _verdict(d: dict[str, Any], min_samples: int | None) -> str:
    """DRIFT, ok, or why the cohort was not judged: "ok" only when the figures were compared."""
    if d["drifted"]:
        return "DRIFT"
    det = d.get("details") or {}
    if det.get("baseline") is None:
        return "no baseline (drift not judged)"
    if det.get("enough_samples") is False:
        below = f"fewer than {min_samples}" if min_samples else "too few"
        return f"{below} predictions (drift not judged)"
    return "ok"


@click.command()
@config_option(DEFAULT_PATH)
@click.option(
    "--window",
    "window_s",
    type=PositiveSeconds(),
    default=None,
    help="Seconds of predictions to analyse (default: analysis.window_s).",
)
@click.option("--no-alerts", is_flag=True, help="Compute and report only; raise no alerts, run no actions.")
@json_option
@handle_errors
def analyze(config_path: Path, window_s: float | None, no_alerts: bool, as_json: bool) -> None:
    """Run the drift, performance and health analysis now; write the JSON and HTML report."""
    from cloud.analysis.config import AnalysisConfig
    from cloud.analysis.job import open_governor, run_analysis
    from cloud.fleet.store import FleetStore
    from shared.config import validate_config

    cfg = load_existing(config_path)
    if window_s is not None:
        # Validated like the file (model_copy(update=...) would skip the section's own checks).
        analysis = validate_config(
            AnalysisConfig, {**cfg.analysis.model_dump(), "window_s": window_s}, "--window"
        )
        cfg = cfg.model_copy(update={"analysis": analysis})
    gov = None if no_alerts else open_governor(cfg, actor="parkwatch-analyze")
    try:
        with FleetStore(cfg.fleet_store) as fs:
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
    type=click.Choice(["cat", "dog", "none", "neither"]),
    required=True,
    help="What the frame really shows: cat, dog, or none (no cat or dog; 'neither' is the same).",
)
@click.option("--actor", type=ACTOR, required=True, envvar="PARKWATCH_ACTOR", help="Who says so (audited).")
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
    from cloud.fleet.feedback import label_prediction
    from cloud.fleet.store import FleetStore
    from cloud.registry.audit import AuditLog

    cfg = load_existing(config_path)
    with FleetStore(cfg.fleet_store) as fs:
        row = label_prediction(
            fs,
            label,
            actor,
            prediction_id=prediction_id,
            snapshot=snapshot,
            comment=comment,
            audit=AuditLog(cfg.paths.registry_db),
        )
    emit(
        row,
        as_json,
        lambda r: f"{r['prediction_id']}: predicted {r['predicted']}, labelled {r['label']} by {r['actor']}",
    )


def _human_lineage(r: dict[str, Any]) -> str:
    """``lineage`` for people: one section per hop, UTC times, figures not reprs."""
    lines: list[str] = []
    p = r.get("prediction")
    if p:
        lines += [
            f"prediction {p['id']}",
            f"  result     {p['label']} (confidence {p['confidence']:.2f})"
            + (f", probabilities {pairs(p.get('probs'))}" if p.get("probs") else ""),
            f"  where      site {p['site']}, camera {p['camera']}",
            f"  when       {utc(p['ts'])} (received {utc(p.get('received_ts'))})",
        ]
        if p.get("flags"):
            lines.append(f"  flags      {', '.join(p['flags'])}")
        d = r.get("device") or {}
        if d.get("device"):
            lines.append(
                f"  device     {d['device']} (group {d.get('grp') or '-'}, "
                f"software {d.get('software') or '-'})"
            )
        if p.get("lighting"):
            lines.append(f"  lighting   {p['lighting']}")
        if p.get("regions"):
            from cloud.fleet.outcomes import regions_text

            lines.append(f"  regions    {regions_text(p['regions'])}")
        fb = r.get("feedback")
        if fb:
            lines.append(
                f"  label      {fb.get('label')} by {fb.get('actor') or fb.get('labelled_by') or '-'}"
            )
    m = r.get("model")
    if m is None:
        lines.append(f"model {r['model_version']}: not in the registry (see missing below)")
    else:
        gate = "passed" if m.get("gate_passed") else "FAILED"
        lines += [
            f"model {r['model_version']}",
            f"  stage      {m.get('stage')}, gate {gate}, created {utc(m.get('created_at'))}",
        ]
        met = {k: v for k, v in (m.get("metrics") or {}).items() if not isinstance(v, dict | list)}
        if met:
            lines.append(f"  metrics    {pairs(met)}")
        lines.append(f"  package    {m.get('package_dir') or '-'}")
    code = r.get("code") or {}
    if code:
        # The lineage document names the code keys one way (cloud.packaging.lineage.ModelLineage).
        lines.append(
            f"  code       {code.get('commit') or '-'}"
            + (" (uncommitted changes)" if code.get("dirty") else "")
        )
        pk = code.get("packages")
        if pk:
            lines.append(f"  libraries  {pairs(pk)}")
    run = r.get("training_run")
    if run:
        lines.append(
            f"training run {run['id']} ({run['status']}), started {utc(run.get('started_at'))}, "
            f"finished {utc(run.get('finished_at'))}"
        )
        if run.get("best_params"):
            lines.append(f"  best       {pairs(run['best_params'])}")
    if r.get("parameters"):
        lines.append("parameters")
        lines += block(r["parameters"], indent="  ")
    ds = r.get("dataset")
    if ds:
        lines.append(f"dataset {ds['id']}")
        lines.append(
            f"  files      {ds['n_files']} from {ds['source']} (ingested {utc(ds.get('created_at'))})"
        )
        counts = ds.get("counts") or {}
        for split in ("train", "test"):
            if counts.get(split):
                lines.append(f"  {split:<10} {pairs(counts[split])}")
        if ds.get("files"):
            more = " (truncated)" if ds.get("files_truncated") else ""
            lines.append(
                f"  file list  {len(ds['files'])} files{more} (--json lists them; --no-files leaves them out)"
            )
    approvals = r.get("approvals") or []
    if approvals:
        lines.append("approvals")
        lines += table(
            (
                [
                    utc(a["ts"]),
                    a["decision"],
                    f"{a['from_stage']} -> {a['to_stage']}",
                    a["actor"],
                    ("FORCED: " if a.get("forced") else "") + a["reason"],
                ]
                for a in approvals
            ),
            ["when", "decision", "stage", "by", "reason"],
        )
    rollouts = r.get("rollouts") or []
    if rollouts:
        lines.append("rollouts")
        lines += table(
            (
                [
                    utc(ro["started_ts"]),
                    ro["kind"],
                    ro["group"],
                    ro["actor"],
                    ro["status"] + (f": {ro['status_reason']}" if ro.get("status_reason") else ""),
                ]
                for ro in rollouts
            ),
            ["when", "kind", "group", "by", "status"],
        )
    missing = r.get("missing") or []
    if missing:
        lines.append("missing")
        lines += [f"  - {x}" for x in missing]
    return "\n".join(lines)


@click.command()
@click.argument("ref")
@click.option("--no-files", is_flag=True, help="Leave out the dataset's file list.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def lineage(ref: str, no_files: bool, config_path: Path, as_json: bool) -> None:
    """Where REF (a prediction DEVICE:SEQ or a MODEL_VERSION) came from."""
    from cloud.lineage import lineage as get_lineage

    cfg = load_existing(config_path, "fleet" if ":" in ref else "registry")
    emit(get_lineage(cfg, ref, with_files=not no_files), as_json, _human_lineage)


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
@click.option(
    "--rule",
    type=click.Choice(sorted(RULES)),
    metavar="RULE",
    default=None,
    help="Only this rule's alerts (an unknown name lists the known ones).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many."
)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def alerts_list(
    state: str | None, site: str | None, rule: str | None, limit: int, config_path: Path, as_json: bool
) -> None:
    """Alerts, newest first."""
    from cloud.governance.alerts import AlertStore

    cfg = load_existing(config_path)
    with AlertStore(cfg.fleet_store) as st:
        emit(st.list(state=state, site=site, rule=rule, limit=limit), as_json, _human_alerts)


def _transition(
    which: str, alert_id: str, actor: str, comment: str | None, config_path: Path, as_json: bool
) -> None:
    from cloud.governance.alerts import AlertStore
    from cloud.governance.engine import ack_alert, resolve_alert
    from cloud.governance.notify import AlertPublisher
    from cloud.registry.audit import AuditLog

    cfg = load_existing(config_path)
    pub = AlertPublisher(cfg.mqtt, f"{cfg.client_id('alerts')}-cli", timeout_s=3.0)
    fn = ack_alert if which == "ack" else resolve_alert
    try:
        with AlertStore(cfg.fleet_store) as st:
            a = fn(st, alert_id, actor, comment, audit=AuditLog(cfg.paths.registry_db), publisher=pub)
    finally:
        pub.close()
    emit(a, as_json, lambda x: f"{x['id']} {x['state']} by {actor}")


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--actor", type=ACTOR, required=True, envvar="PARKWATCH_ACTOR", help="Who does this (audited).")
@click.option("--comment", default=None)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def alerts_ack(alert_id: str, actor: str, comment: str | None, config_path: Path, as_json: bool) -> None:
    """Acknowledge ALERT_ID: someone is on it."""
    _transition("ack", alert_id, actor, comment, config_path, as_json)


@alerts.command("resolve")
@click.argument("alert_id")
@click.option("--actor", type=ACTOR, required=True, envvar="PARKWATCH_ACTOR", help="Who does this (audited).")
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
    from cloud.fleet.store import FleetStore

    cfg = load_existing(config_path)
    with FleetStore(cfg.fleet_store) as fs:
        if check:
            run_health(cfg, fs, None)
        if device:
            dev = fs.device(device)
            from cloud.release.store import read_membership

            d = dev.to_dict()
            d["grp"] = read_membership(cfg.paths).get(f"{dev.site}/{dev.device}")  # provisioned
            d["gaps"] = fs.gaps(device)
            d["status_events"] = fs.status_events(device, limit=10)
            latest = fs.telemetry(device, limit=1)
            d["latest_telemetry"] = latest[-1] if latest else None
            d["outcomes_window_s"] = cfg.analysis.window_s
            d["outcomes"] = fs.outcomes(device=device, since=time.time() - cfg.analysis.window_s)
            emit(d, as_json, _human_device)
            return
        rows = fs.devices()
        from cloud.fleet.materializer_stats import stats_in

        applied = list(stats_in(fs).values())
    emit(rows, as_json, lambda r: _human_health(r) + _human_applied(applied))


def _human_applied(stats: list[Any]) -> str:
    """How current the fleet tables are: each materializer's last batch (from the fleet store)."""
    if not stats:
        return "\n\ningest: no materializer has applied a batch yet"
    lines = ["\n\ningest (materialized into the fleet store):"]
    for m in stats:
        lag = "-" if m.lag_s is None else f"{m.lag_s:.1f} s"
        lines.append(
            f"  {m.worker:<24} {m.materialized} messages, {m.stored_predictions} predictions, "
            f"{m.dead_letters} dead letters; last batch {_ago(m.last_batch_ts)} (waited {lag})"
        )
    return "\n".join(lines)


HEALTH_HEADER = f"{'DEVICE':<20} {'SITE':<12} {'HEALTH':<9} {'LAST SEEN':<17} {'MODEL / UPDATE':<28} REASONS"


def _human_health(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no devices have reported yet"
    lines = [HEALTH_HEADER]
    for d in rows:
        model = f"{d['model_version'] or '-'} / {d['update_state'] or '-'}"
        lines.append(
            f"{d['device']:<20} {d['site']:<12} {(d['health'] or 'unchecked'):<9} "
            f"{_ago(d['last_seen']):<17} {model:<28} {'; '.join(d['health_reasons'] or []) or '-'}"
        )
    return "\n".join(lines)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "never"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return str(ts)


def _fig(v: Any, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def _human_device(d: dict[str, Any]) -> str:
    """One device as text: state, health and why, when it was last heard, gaps, latest telemetry."""
    lines = [
        f"device {d['device']} at site {d['site']} (group {d.get('grp') or '-'}, software "
        f"{d.get('software') or '-'})",
        (
            f"  status   {d['status']} since {_utc(d.get('status_ts'))}"
            + (f" ({d['status_reason']})" if d.get("status_reason") else "")
            if d.get("status")
            else "  status   unknown (no status message received)"
        ),
        f"  health   {d.get('health') or 'unchecked'}"
        + (f", checked {_ago(d['health_ts'])}" if d.get("health_ts") else ""),
    ]
    lines += [f"           - {x}" for x in d.get("health_reasons") or []]
    lines.append(
        f"  seen     last {_ago(d.get('last_seen'))} ({_utc(d.get('last_seen'))}), "
        f"first {_utc(d.get('first_seen'))}"
    )
    lines.append(
        f"  model    {d.get('model_version') or '-'}; update {d.get('update_state') or '-'}"
        + (f" to {d['update_version']}" if d.get("update_version") else "")
        + (f" ({d['update_reason']})" if d.get("update_reason") else "")
    )
    lines.append(
        f"  predictions {d.get('predictions_total', 0)} stored, last seq {d.get('max_seq') or '-'}, "
        f"{d.get('evicted_total', 0)} evicted on the device"
    )
    o = d.get("outcomes")
    if o is not None:
        pets = ", ".join(f"{k} {v}" for k, v in o["pets"].items())
        ir = "lighting not reported" if o["ir_share"] is None else f"IR {o['ir_share']:.0%} of frames"
        win = float(d.get("outcomes_window_s") or 0)
        span = f"{win / 3600:g} h" if win >= 3600 else f"{win / 60:g} min"
        lines.append(
            f"  outcomes since {_utc(o.get('from'))} (window {span}, whole hours): {pets} (cats and dogs "
            f"{o['pet_total']}), none {o['none']}, abstain {o['abstain']}; {ir}"
        )
    t = d.get("latest_telemetry")
    if t:
        lines.append(
            f"  telemetry {_ago(t['ts'])}: cpu {_fig(t.get('cpu_percent'), '.0f', ' %')}, memory "
            f"{_fig(t.get('memory_percent'), '.0f', ' %')}, disk {_fig(t.get('disk_percent'), '.0f', ' %')}, "
            f"temp {_fig(t.get('temp_max'), '.1f', ' °C')}, latency p95 "
            f"{_fig(t.get('latency_p95'), '.1f', ' ms')}, {_fig(t.get('inference_fps'), '.1f')} fps, "
            f"outbox backlog {_fig(t.get('outbox_backlog'), 'd')}"
        )
    else:
        lines.append("  telemetry none received")
    gaps = d.get("gaps") or []
    if gaps:
        lines.append(f"  gaps     {sum(int(g['missing']) for g in gaps)} prediction(s) missing:")
        lines += [
            f"           seq {g['first_seq']}-{g['last_seq']} ({g['missing']}): {g['cause']}, "
            f"detected {_utc(g['detected_ts'])}"
            for g in gaps
        ]
    else:
        lines.append("  gaps     none")
    events = d.get("status_events") or []
    if events:
        lines.append("  recent status changes:")
        lines += [
            f"           {_utc(e['ts'])} {e['state']}" + (f" ({e['reason']})" if e.get("reason") else "")
            for e in events
        ]
    return "\n".join(lines)


def _human_inbox(r: dict[str, Any]) -> str:
    lines = []
    if r.get("retired"):
        x = r["retired"]
        lines.append(
            f"retired {x['worker']}: {x['received']} queued message(s) taken in and applied; its broker "
            "session ended, the other workers of the group now get everything"
        )
    lines.append("ingest workers (acknowledged, not yet in the fleet tables):")
    for w in r["workers"]:
        if w.get("error"):
            lines.append(f"  {w['worker']:<32} UNREADABLE: {w['error']}")
            continue
        age = "-" if w["oldest_age_s"] is None else f"{w['oldest_age_s']:.0f} s"
        lines.append(f"  {w['worker']:<32} backlog {w['backlog']:>7}  oldest waiting {age}")
    if not r["workers"]:
        lines.append("  none yet (ingest has not run with this data_dir)")
    if r.get("fleet_workers"):
        lines.append("ingest workers writing to the fleet store (all hosts, from their heartbeat rows):")
        for w in r["fleet_workers"]:
            age = "-" if w["oldest_age_s"] is None else f"{w['oldest_age_s']:.0f} s"
            lines.append(
                f"  {w['worker']:<24} {w['host']:<20} {w['state']:<8} backlog {w['backlog'] or 0:>7}  "
                f"oldest waiting {age}  stored {w['stored_predictions']}  "
                f"heartbeat {w['heartbeat_age_s']:.0f} s ago"
                + (f"  errors {w['write_errors']}" if w["write_errors"] else "")
            )
    if r.get("materializers"):
        lines.append("materialized into the fleet store (all workers, counted with each batch):")
        for m in r["materializers"]:
            lag = "-" if m["lag_s"] is None else f"{m['lag_s']:.1f} s"
            lines.append(
                f"  {m['worker']:<24} {m['materialized']:>9} messages  stored {m['stored_predictions']}  "
                f"duplicates {m['duplicates']}  dead letters {m['dead_letters']}  refused {m['rejected']}  "
                f"last batch {_ago(m['last_batch_ts'])} ({m['last_batch_rows']} rows, waited {lag})"
            )
    lines.append(f"refused by validation (dead letters, newest first; {r['dead_letters_total']} kept):")
    for d in r["dead_letters"]:
        lines.append(f"  #{d['id']} {_ago(d['received_ts'])} {d['kind']:<18} {d['reason']}")
    if not r["dead_letters"]:
        lines.append("  none")
    return "\n".join(lines)


@click.command()
@click.option(
    "--dead-letters",
    "limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many refused messages to list.",
)
@click.option(
    "--drain",
    "drain",
    metavar="WORKER",
    default=None,
    help="Apply a worker's inbox now, here (one whose client_id was renamed or that no longer runs). "
    "Waits while that worker's own materializer holds it.",
)
@click.option(
    "--retire",
    "retire",
    metavar="WORKER",
    default=None,
    help="Take a stopped worker out of service: apply what the broker still queues for its session, "
    "then end the session so the other workers get everything.",
)
@click.option(
    "--timeout",
    type=PositiveSeconds(),
    default=600.0,
    show_default=True,
    help="How long --retire may take before it gives up (keeping the session).",
)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def inbox(
    limit: int, drain: str | None, retire: str | None, timeout: float, config_path: Path, as_json: bool
) -> None:
    """Ingest backlog per worker, and the messages validation refused (with the payload in --json)."""
    import time

    from cloud.fleet.errors import FleetError, NotFound
    from cloud.fleet.inbox import inbox_path, inbox_states, remove_inbox, worker_running
    from cloud.fleet.materialize import Materializer
    from cloud.fleet.materializer_stats import stats_in
    from cloud.fleet.retire import retire_worker
    from cloud.fleet.store import FleetStore

    if drain is not None and retire is not None:
        raise click.UsageError("--drain and --retire are separate steps: give one of them")
    # --drain and --retire may be what first write fleet.db; the folder must exist.
    cfg = load_existing(config_path, None if drain is not None or retire is not None else "fleet")
    retired: dict[str, object] | None = None
    for worker in (w for w in (drain, retire) if w is not None):
        # A worker that ran against this data_dir left its inbox here: a name without one is a typo.
        if not inbox_path(cfg.paths, worker).exists():
            known = ", ".join(str(s["worker"]) for s in inbox_states(cfg.paths, time.time())) or "none"
            raise NotFound(f"no inbox for worker {worker!r} under {cfg.data_dir}; known workers: {known}")
    if retire is not None:
        if worker_running(cfg.paths, retire):
            raise FleetError(
                f"ingest worker {retire!r} is running here: stop it first (its `parkwatch cloud serve`), "
                "then retire it; connecting with its client_id would take its session over"
            )
        retired = retire_worker(cfg, retire, timeout_s=timeout)
        remove_inbox(cfg.paths, retire)  # applied and its session ended: nothing left to list
    if drain is not None:
        m = Materializer(cfg, drain, lock_wait_s=5.0)
        try:
            m.drain()
        finally:
            m.close()
    from cloud.fleet.workers import workers_in

    with FleetStore(cfg.fleet_store) as fs:
        letters = fs.dead_letters(limit)
        total = int(fs.query("SELECT count(*) AS n FROM dead_letters")[0]["n"])
        # Every worker that writes to this fleet store, on any host (its heartbeat row), and every
        # materializer's counters, kept in the fleet store with each batch.
        fleet_workers = [w.to_dict() for w in workers_in(fs, cfg.fleet.worker_stale_s)]
        materializers = [m.to_dict() for m in stats_in(fs).values()]

    r = {
        "workers": inbox_states(cfg.paths, time.time()),
        "fleet_workers": fleet_workers,
        "materializers": materializers,
        "dead_letters": letters,
        "dead_letters_total": total,
    }
    if retired is not None:
        r["retired"] = retired
    emit(r, as_json, _human_inbox)


@click.command()
@click.option(
    "--worker",
    default=None,
    metavar="WORKER",
    help="The ingest worker (its fleet.client_id) whose inbox to apply; default this config's.",
)
@config_option(DEFAULT_PATH)
@click.option("--config-stdin", is_flag=True, hidden=True, help="Read the config as JSON from stdin.")
@click.option("--watch-parent", type=int, default=None, hidden=True, help="Exit when this process does.")
@handle_errors
def materialize(worker: str | None, config_path: Path, config_stdin: bool, watch_parent: int | None) -> None:
    """Apply an ingest worker's inbox to the fleet store until stopped (SIGTERM or Ctrl-C).

    The materializer of 'parkwatch cloud serve' (which starts this as a child process), or a
    service of its own beside 'serve --skip materializer' (parkwatch-cloud-materialize.service).
    """
    import sys

    from cloud.config import CloudConfig, load
    from cloud.fleet.materialize import materialize_until_stopped

    cfg = CloudConfig.model_validate_json(sys.stdin.read()) if config_stdin else load(config_path)
    materialize_until_stopped(cfg, worker or cfg.client_id("ingest"), parent_pid=watch_parent)
