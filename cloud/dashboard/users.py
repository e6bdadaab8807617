"""Local dashboard users: names, roles and argon2id password hashes in their own SQLite file.

Users live apart from the registry so a backup of the registry never carries password hashes,
and so the dashboard can be reset without touching models or the audit log. ``session_epoch``
rises on every password or role change, which ends every session signed before it. It starts
at a random 62-bit number, not at 1: a removed user's cookie must not work again when the name is
re-added (with a restarting epoch it did, even with another role).
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cloud.dashboard.errors import UserError
from cloud.registry.audit import AuditLog
from shared.sqlite import Migration, Schema, SchemaError, open_sqlite

if TYPE_CHECKING:
    from cloud.config import CloudConfig

MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
# Sign-in must cost the same whether or not the user exists, so names cannot be probed by timing.
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("parkwatch-no-such-user")


class Role(StrEnum):
    VIEWER = "viewer"
    ENGINEER = "engineer"
    APPROVER = "approver"
    ADMIN = "admin"


# Which roles may do what. Approving is kept from engineers on purpose: the person who ships a
# model is not the person who signs it off (the QA / product-owner step of the workflow).
PERMISSIONS: dict[str, frozenset[Role]] = {
    "view": frozenset(Role),
    "approve": frozenset({Role.APPROVER, Role.ADMIN}),
    "rollout": frozenset({Role.ENGINEER, Role.ADMIN}),
    "ack_alert": frozenset({Role.ENGINEER, Role.APPROVER, Role.ADMIN}),
    "label": frozenset({Role.ENGINEER, Role.APPROVER, Role.ADMIN}),
    "manage_users": frozenset({Role.ADMIN}),
}


def allowed(role: Role | str, action: str) -> bool:
    """Pure: may ``role`` perform ``action``? Unknown actions are refused."""
    try:
        return Role(role) in PERMISSIONS.get(action, frozenset())
    except ValueError:
        return False


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    session_epoch: int
    created_at: float
    last_login: float | None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(
            f"user name {name!r} must be 2-32 characters: a lower-case letter first, then "
            "lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters; use a passphrase")
    return password


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}") from None


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def new_epoch() -> int:
    """A fresh session generation: random, so no earlier holder of the name can have signed it."""
    return secrets.randbits(62) + 1


# dashboard.db's tables, as numbered migrations (shared/sqlite.py). 1: as it shipped before
# numbered migrations (IF NOT EXISTS: an older file is adopted unchanged).
USERS_V1 = """
CREATE TABLE IF NOT EXISTS "users" (
   "name" TEXT PRIMARY KEY,
   "role" TEXT NOT NULL,
   "pw_hash" TEXT NOT NULL,
   "session_epoch" INTEGER NOT NULL,
   "created_at" REAL NOT NULL,
   "last_login" REAL
);
"""
USERS_SCHEMA = Schema("dashboard users database", (Migration(1, USERS_V1, "users"),))


class UserStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            # Through the one SQLite opener (WAL, a busy timeout, the schema migrated), with
            # SQLite's default durability (FULL) as before.
            conn = open_sqlite(self.path, USERS_SCHEMA, busy_timeout_s=10)
            self.db = sqlite_utils.Database(conn)
            self.t = self.db.table("users")
        except SchemaError as e:
            raise UserError(str(e)) from e
        except (OSError, sqlite3.Error) as e:
            raise UserError(
                f"cannot open the users database {self.path}: {e}; check [dashboard] "
                "users_db and the folder's permissions"
            ) from e

    def _row(self, name: str) -> dict[str, Any] | None:
        rows = list(self.t.rows_where("name = ?", [name]))
        return rows[0] if rows else None

    @staticmethod
    def _user(r: dict[str, Any]) -> User:
        ll = r.get("last_login")
        return User(
            str(r["name"]),
            Role(str(r["role"])),
            int(r["session_epoch"]),
            float(r["created_at"]),
            float(ll) if ll is not None else None,
        )

    def add(self, name: str, role: Role | str, password: str) -> User:
        check_name(name)
        role = parse_role(str(role))
        check_password(password)
        if self._row(name) is not None:
            raise UserError(f"user {name!r} exists already; use `users passwd` to change the password")
        self.t.insert(
            {
                "name": name,
                "role": role.value,
                "pw_hash": _HASHER.hash(password),
                "session_epoch": new_epoch(),
                "created_at": time.time(),
                "last_login": None,
            }
        )
        return self.get(name)

    def get(self, name: str) -> User:
        r = self._row(name)
        if r is None:
            raise UserError(f"no user {name!r}: see `parkwatch cloud users list`")
        return self._user(r)

    def find(self, name: str) -> User | None:
        r = self._row(name)
        return self._user(r) if r else None

    def list(self) -> list[User]:
        return [self._user(r) for r in self.t.rows_where(order_by="name")]

    def set_password(self, name: str, password: str) -> User:
        check_password(password)
        user = self.get(name)
        self.t.update(name, {"pw_hash": _HASHER.hash(password), "session_epoch": user.session_epoch + 1})
        return self.get(name)

    def set_role(self, name: str, role: Role | str) -> User:
        user = self.get(name)
        self.t.update(name, {"role": parse_role(str(role)).value, "session_epoch": user.session_epoch + 1})
        return self.get(name)

    def remove(self, name: str) -> None:
        self.get(name)
        self.t.delete(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches, else None (same cost either way)."""
        r = self._row(name)
        stored = str(r["pw_hash"]) if r else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if r is None:
            return None
        updates: dict[str, Any] = {"last_login": time.time()}
        if _HASHER.check_needs_rehash(stored):
            updates["pw_hash"] = _HASHER.hash(password)
        self.t.update(name, updates)
        return self.get(name)

    def close(self) -> None:
        self.db.close()


def cli_actor() -> str:
    """Who runs a command on this host, for the audit log (the sudo user, not root)."""
    return f"cli:{os.environ.get('SUDO_USER') or getpass.getuser()}"


def ensure_demo_user(cfg: CloudConfig) -> tuple[str, str]:
    """Create (or reset) the demo admin and return its (name, password) for ``make demo`` to print.

    The password is random each time so a demo box left running is not open to a known password.
    Lives with the user store (not the CLI) because the demo runner calls it as a library.
    """
    store = UserStore(cfg.paths.dashboard_db)
    name, password = cfg.dashboard.demo_user, generate_password()
    try:
        if store.find(name) is None:
            store.add(name, Role.ADMIN, password)
            AuditLog(cfg.paths.registry_db).append(
                cli_actor(), "user.add", f"user:{name}", {"role": "admin", "demo": True}
            )
        else:
            store.set_password(name, password)
            store.set_role(name, Role.ADMIN)
    finally:
        store.close()
    return name, password
