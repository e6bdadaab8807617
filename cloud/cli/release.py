"""``parkwatch cloud keys|approve|reject|rollout|rollback|audit|devices``: the secure-delivery commands.

Thin wrappers over cloud.release.channel.ReleaseChannel (the same calls the dashboard makes).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import click

from cloud.cli.common import ACTOR
from cloud.config import DEFAULT_PATH
from shared.clitools import config_option, emit, handle_errors, json_option
from shared.textfmt import utc


def _channel(config_path: Path) -> Any:
    from cloud.config import load
    from cloud.release.channel import ReleaseChannel

    return ReleaseChannel(load(config_path))


def _actor(name: str | None) -> str:
    return name or getpass.getuser()


# ---- keys --------------------------------------------------------------------------------------
@click.group()
def keys() -> None:
    """Signing keys and the TUF repository of the release channel."""


@keys.command("init")
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log); default: the OS user.")
@click.option(
    "--approver",
    "approvers",
    multiple=True,
    type=ACTOR,
    help="One key per approver, named after them (repeat); 'approve --as NAME' then signs with "
    "NAME's key only. Default: numbered approver keys the approvers share.",
)
@click.option(
    "--allow-approver-key-on-server",
    is_flag=True,
    help="Create the approver key on this server although release.approver_keys_dir is unset "
    "(test and demo installs only: whoever controls the server can then approve models).",
)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def keys_init(
    actor: str | None,
    approvers: tuple[str, ...],
    allow_approver_key_on_server: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Create the ed25519 keys (files 0600) and version 1 of the TUF repository.

    Refuses unless release.approver_keys_dir is set (or --allow-approver-key-on-server).
    """
    out = _channel(config_path).keys_init(
        _actor(actor),
        allow_approver_key_on_server=allow_approver_key_on_server,
        approvers=list(approvers),
    )
    for w in out.warnings:
        click.secho(w, err=True, fg="red", bold=True)
    emit(
        out,
        as_json,
        lambda o: (
            f"created {len(o['created'])} key file(s) in {o['keys_dir']} "
            f"(approver keys in {o['approver_keys_dir']})\n"
            f"TUF repository {o['repo']} at root version {o['root_version']}\n"
            f"install {o['trusted_root']} on every box as updater.trusted_root"
        ),
    )


@keys.command("add-approver")
@click.argument("name", type=ACTOR)
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log); default: the OS user.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def keys_add_approver(name: str, actor: str | None, reason: str, config_path: Path, as_json: bool) -> None:
    """Give approver NAME a key of their own that root trusts (needs the root key files)."""
    out = _channel(config_path).keys_add_approver(name, _actor(actor), reason)
    emit(
        out,
        as_json,
        lambda o: (
            f"approver {o['approver']}: key {o['path']} (key id {o['keyid'][:16]}), root version "
            f"{o['root_version']}; hand the file to {o['approver']} and keep it off this server"
        ),
    )


@keys.command("list")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def keys_list(config_path: Path, as_json: bool) -> None:
    """Key files per role with their key ids."""
    out = _channel(config_path).keys_list()
    emit(
        out,
        as_json,
        lambda o: (
            "\n".join(f"{role:10} {k['keyid'][:16]}  {k['path']}" for role, ks in o.items() for k in ks)
            or "no keys"
        ),
    )


@keys.command("rotate")
@click.argument(
    "role", type=click.Choice(["root", "approver", "pipeline", "rollout", "snapshot", "timestamp"])
)
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log).")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def keys_rotate(role: str, actor: str | None, reason: str, config_path: Path, as_json: bool) -> None:
    """Replace ROLE's keys; old key files move to retired/."""
    out = _channel(config_path).keys_rotate(role, _actor(actor), reason)
    emit(out, as_json, lambda o: f"{o['role']}: new key {o['new']}, root version {o['root_version']}")


@keys.command("status")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def keys_status(config_path: Path, as_json: bool) -> None:
    """Repository versions, expiry, builds, approvals and group assignments (--json for scripts)."""
    ch = _channel(config_path)
    from cloud.release.errors import RepositoryError

    if not ch.repo.exists():
        raise RepositoryError(f"no TUF repository in {ch.repo.dir}; run 'parkwatch cloud keys init'")
    emit(ch.repo.status(), as_json, _keys_status_text)


def _keys_status_text(o: dict[str, Any]) -> str:
    approvals = "; ".join(f"{v}: {', '.join(st)}" for v, st in sorted(o["approvals"].items())) or "none"
    groups = ", ".join(f"{g} -> {v}" for g, v in sorted(o["groups"].items())) or "none"
    expires = o["timestamp_expires"].replace("T", " ").replace("+00:00", " UTC")
    return "\n".join(
        [
            f"TUF repository {o['repo']}",
            f"  root        version {o['root_version']}",
            f"  timestamp   version {o['timestamp_version']}, expires {expires}",
            f"  snapshot    version {o['snapshot_version']}",
            f"  builds      {', '.join(o['builds']) or 'none'}",
            f"  approved    {approvals}",
            f"  groups      {groups}",
        ]
    )


# ---- approvals -----------------------------------------------------------------------------------
def _decision_text(d: dict[str, Any]) -> str:
    forced = " (FORCED)" if d["forced"] else ""
    keys = ", ".join(k[:16] for k in d.get("signed_by") or [])
    signed = f" (signed with approver key {keys})" if keys else ""
    return (
        f"{d['version']}: {d['from_stage']} -> {d['to_stage']} by {d['actor']}{forced}: {d['reason']}{signed}"
    )


@click.command()
@click.argument("version")
@click.option("--stage", required=True, type=click.Choice(["staging", "production"]))
@click.option("--as", "actor", type=ACTOR, required=True, help="The approver's name.")
@click.option("--reason", required=True, help="Why this version may run on this stage.")
@click.option("--force", is_flag=True, help="Production without a successful staging rollout (say why).")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def approve(
    version: str, stage: str, actor: str, reason: str, force: bool, config_path: Path, as_json: bool
) -> None:
    """Approve VERSION for a stage and sign it with the approver key."""
    out = _channel(config_path).approve(version, stage, actor, reason, force)
    emit(out, as_json, _decision_text)


@click.command()
@click.argument("version")
@click.option("--as", "actor", type=ACTOR, required=True, help="Who rejects.")
@click.option("--reason", required=True, help="Why.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def reject(version: str, actor: str, reason: str, config_path: Path, as_json: bool) -> None:
    """Reject VERSION: it leaves every stage and its approval signature is withdrawn."""
    out = _channel(config_path).reject(version, actor, reason)
    emit(out, as_json, _decision_text)


# ---- rollout / rollback --------------------------------------------------------------------------
def _status_text(o: dict[str, Any]) -> str:
    """``rollout status`` for people: per group what it should run, how far it got, and why not."""
    lines: list[str] = []
    for g, s in o["groups"].items():
        r = s["rollout"]
        lines.append(f"group {g}: target {s['target_version'] or '(none)'}")
        if r:
            if r["kind"] == "rollout":
                change = f"{r['previous_version'] or 'nothing'} -> {r['version']}"
            else:
                change = f"{r.get('rolled_back_from') or '?'} -> {r['version']}"
            lines.append(
                f"  latest    #{r['id']} {r['kind']} {change} by {r['actor']}, started {utc(r['started_ts'])}"
            )
            status = r["status"].replace("_", " ")
            if r.get("status_reason"):
                status += f": {r['status_reason']}"
            if r.get("finished_ts"):
                status += f" (at {utc(r['finished_ts'])})"
            lines.append(f"  status    {status}")
            if r.get("reason"):
                lines.append(f"  reason    {r['reason']}")
        running = ", ".join(f"{v} x{n}" for v, n in sorted(s["by_version"].items())) or "-"
        states = ", ".join(f"{k} {n}" for k, n in sorted(s["by_state"].items())) or "-"
        lines.append(f"  devices   {s['active']}/{s['devices']} active on the target; running {running}")
        lines.append(f"  states    {states}")
        if not s["devices"]:
            lines.append("            no device is provisioned in or reports from this group")
        for f in s["failed"]:
            about = f" (version {f['version']})" if f.get("version") else ""
            lines.append(
                f"  FAILED    {f['device']}{about} at {utc(f.get('ts'))}: {f['reason'] or 'no reason given'}"
            )
    return "\n".join(lines) or "no groups yet"


@click.command()
@click.argument("version")
@click.option("--group", help="Device group to roll out to (required unless VERSION is 'status').")
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log).")
@click.option("--reason", default="", help="Why (audit log).")
@click.option(
    "--allow-empty-group",
    is_flag=True,
    help="Roll out to a group that has no provisioned device yet (refused otherwise: a typo).",
)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def rollout(
    version: str,
    group: str | None,
    actor: str | None,
    reason: str,
    allow_empty_group: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Roll VERSION out to --group G, or 'rollout status' for where every group stands."""
    ch = _channel(config_path)
    if version == "status":
        emit(ch.status(group), as_json, _status_text)
        return
    if not group:
        raise click.UsageError("--group is required: which device group gets this version?")
    out = ch.rollout(version, group, _actor(actor), reason, allow_empty_group=allow_empty_group)
    emit(
        out,
        as_json,
        lambda o: (
            f"group {o['group']}: {o['previous_version'] or 'nothing'} -> {o['version']} "
            f"(rollout {o['id']}; devices {'notified' if o['notified'] else 'check at their next interval'})"
        ),
    )


@click.command()
@click.option("--group", required=True)
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log).")
@click.option("--reason", required=True)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def rollback(group: str, actor: str | None, reason: str, config_path: Path, as_json: bool) -> None:
    """Point --group back at the version it ran before its latest rollout."""
    out = _channel(config_path).rollback(group, _actor(actor), reason)
    emit(
        out,
        as_json,
        lambda o: f"group {o['group']}: {o['rolled_back']} -> {o['version']} (rollback {o['id']})",
    )


# ---- audit ---------------------------------------------------------------------------------------
@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log."""


@audit.command("verify")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def audit_verify(config_path: Path, as_json: bool) -> None:
    """Check the hash chain and its head against the signed checkpoint; exit 1 naming what broke."""
    from shared.clitools import fail

    ch = _channel(config_path)
    check = ch.audit.verify()
    anchor = ch.verify_audit_anchor()
    unanchored = anchor.status == "missing" and not ch.repo.exists()  # a registry-only install
    out = {
        "ok": check.ok and (anchor.ok or unanchored),
        "entries": check.entries,
        "first_bad_id": check.first_bad_id,
        "reason": check.reason,
        "anchor": {
            "ok": anchor.ok,
            "status": anchor.status,
            "reason": anchor.reason,
            "checkpoint": anchor.checkpoint,
        },
    }
    if not check.ok:
        fail(f"audit log broken at entry {check.first_bad_id}: {check.reason}", 1, as_json, **out)
    if not out["ok"]:
        fail(f"audit log does not match its signed checkpoint: {anchor.reason}", 1, as_json, **out)
    emit(
        out,
        as_json,
        lambda o: (
            f"audit log ok: {o['entries']} entries, chain intact; "
            + (o["anchor"]["reason"] if o["anchor"]["ok"] else f"NOT anchored: {o['anchor']['reason']}")
        ),
    )


@audit.command("list")
@click.option("--subject", help="e.g. model:1.2.0 or group:staging")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def audit_list(subject: str | None, limit: int, config_path: Path, as_json: bool) -> None:
    """Newest entries first."""
    entries = [e.to_dict() for e in _channel(config_path).audit.entries(subject, limit, newest_first=True)]
    emit(
        entries,
        as_json,
        lambda es: "\n".join(
            f"{e['id']:5} {e['actor']:12} {e['action']:18} {e['subject']:24} {e['details']}" for e in es
        ),
    )


# ---- devices -------------------------------------------------------------------------------------
@click.group()
def devices() -> None:
    """Per-device MQTT credentials and the broker ACL."""


@devices.command("add")
@click.argument("device")
@click.option("--site", required=True)
@click.option("--group", default="production", show_default=True)
@click.option(
    "--secret-out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the device's password (0600); copy it to the box.",
)
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log).")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def devices_add(
    device: str, site: str, group: str, secret_out: Path, actor: str | None, config_path: Path, as_json: bool
) -> None:
    """Provision DEVICE: a random password, its hash in the broker files, ACL for its topics."""
    out = _channel(config_path).provision_device(site, device, group, secret_out, _actor(actor))
    emit(
        out,
        as_json,
        lambda o: (
            f"{o['site']}/{o['device']} (group {o['group']}): password in {o['secret_file']}; "
            f"broker files {o.get('passwd', '(need a cloud account first)')}; reload mosquitto"
        ),
    )


@devices.command("cloud-account")
@click.option("--secret-out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log).")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def devices_cloud(secret_out: Path, actor: str | None, config_path: Path, as_json: bool) -> None:
    """Create the cloud's own broker account (reads and writes parkwatch/v1/#)."""
    out = _channel(config_path).cloud_account(secret_out, _actor(actor))
    emit(out, as_json, lambda o: f"cloud account {o['username']}: password in {o['secret_file']}")


@devices.command("revoke")
@click.argument("device")
@click.option("--site", required=True)
@click.option("--reason", required=True)
@click.option("--as", "actor", type=ACTOR, help="Who does this (audit log).")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def devices_revoke(
    device: str, site: str, reason: str, actor: str | None, config_path: Path, as_json: bool
) -> None:
    """Remove DEVICE's credential from the broker files (reload mosquitto afterwards)."""
    out = _channel(config_path).revoke_device(site, device, _actor(actor), reason)
    emit(out, as_json, lambda o: f"{o['site']}/{o['device']} revoked")


@devices.command("list")
@click.option("--group")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def devices_list(group: str | None, config_path: Path, as_json: bool) -> None:
    """Provisioned devices (no secrets)."""
    rows = [d.public() for d in _channel(config_path).states.provisioned(group)]
    emit(
        rows,
        as_json,
        lambda rs: "\n".join(f"{r['site']}/{r['device']}  group {r['grp']}" for r in rs) or "no devices",
    )


@devices.command("render")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def devices_render(config_path: Path, as_json: bool) -> None:
    """Rewrite the broker's passwd and acl files from the device list."""
    out = _channel(config_path).render_broker()
    emit(out, as_json, lambda o: f"wrote {o}" if o else "no cloud account yet: run 'devices cloud-account'")
