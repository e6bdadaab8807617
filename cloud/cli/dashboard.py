"""``parkwatch cloud users …``: local dashboard accounts (the demo's account: ``cloud.dashboard.users``)."""

from __future__ import annotations

from pathlib import Path

import click

from cloud.config import DEFAULT_PATH, CloudConfig
from cloud.dashboard.users import UserStore, cli_actor
from shared.clitools import config_option, emit, handle_errors, json_option

ROLES = ("viewer", "engineer", "approver", "admin")


def _store(cfg: CloudConfig) -> UserStore:
    return UserStore(cfg.paths.dashboard_db)


def _audit(cfg: CloudConfig, action: str, subject: str, details: dict[str, object]) -> None:
    from cloud.registry.audit import AuditLog

    AuditLog(cfg.paths.registry_db).append(cli_actor(), action, subject, details)


def _password(given: str | None, generate: bool) -> tuple[str, bool]:
    from cloud.dashboard.users import generate_password

    if given:
        return given, False
    if generate:
        return generate_password(), True
    return click.prompt("Password", hide_input=True, confirmation_prompt=True), False


@click.group()
def users() -> None:
    """Dashboard sign-in accounts (roles: viewer, engineer, approver, admin)."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do.")
@click.option("--password", envvar="PARKWATCH_NEW_PASSWORD", help="Else prompted (or --generate).")
@click.option("--generate", is_flag=True, help="Generate a random password and print it once.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def users_add(
    name: str, role: str, password: str | None, generate: bool, config_path: Path, as_json: bool
) -> None:
    """Create user NAME with --role."""
    from cloud.config import load

    cfg = load(config_path)
    pw, generated = _password(password, generate)
    store = _store(cfg)
    try:
        u = store.add(name, role, pw)
    finally:
        store.close()
    _audit(cfg, "user.add", f"user:{name}", {"role": role})
    out = {"ok": True, "name": u.name, "role": u.role.value, **({"password": pw} if generated else {})}
    emit(
        out,
        as_json,
        lambda o: (
            f"added {o['name']} ({o['role']})" + (f"; password: {o['password']}" if "password" in o else "")
        ),
    )


@users.command("list")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def users_list(config_path: Path, as_json: bool) -> None:
    """List users with their roles and last sign-in."""
    from cloud.config import load

    store = _store(load(config_path))
    try:
        rows = [
            {"name": u.name, "role": u.role.value, "created_at": u.created_at, "last_login": u.last_login}
            for u in store.list()
        ]
    finally:
        store.close()
    emit(
        rows,
        as_json,
        lambda rs: (
            "\n".join(f"{r['name']:<20} {r['role']}" for r in rs)
            or "no users yet: parkwatch cloud users add NAME --role viewer"
        ),
    )


@users.command("passwd")
@click.argument("name")
@click.option("--password", envvar="PARKWATCH_NEW_PASSWORD", help="Else prompted (or --generate).")
@click.option("--generate", is_flag=True, help="Generate a random password and print it once.")
@click.option("--role", type=click.Choice(ROLES), default=None, help="Also change the role.")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def users_passwd(
    name: str, password: str | None, generate: bool, role: str | None, config_path: Path, as_json: bool
) -> None:
    """Set NAME's password (ends their open sessions); --role changes the role too."""
    from cloud.config import load

    cfg = load(config_path)
    store = _store(cfg)
    try:
        store.get(name)
        pw, generated = _password(password, generate)
        u = store.set_password(name, pw)
        if role:
            u = store.set_role(name, role)
    finally:
        store.close()
    _audit(cfg, "user.passwd", f"user:{name}", {"role": u.role.value})
    out = {"ok": True, "name": u.name, "role": u.role.value, **({"password": pw} if generated else {})}
    emit(
        out,
        as_json,
        lambda o: (
            f"updated {o['name']} ({o['role']})" + (f"; password: {o['password']}" if "password" in o else "")
        ),
    )


@users.command("remove")
@click.argument("name")
@config_option(DEFAULT_PATH)
@json_option
@handle_errors
def users_remove(name: str, config_path: Path, as_json: bool) -> None:
    """Delete user NAME (their sessions end at once)."""
    from cloud.config import load

    cfg = load(config_path)
    store = _store(cfg)
    try:
        store.remove(name)
    finally:
        store.close()
    _audit(cfg, "user.remove", f"user:{name}", {})
    emit({"ok": True, "name": name}, as_json, lambda o: f"removed {o['name']}")
