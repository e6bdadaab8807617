"""Sign-in, sessions, CSRF and roles through the real dashboard app over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud.dashboard.errors import UserError
from cloud.dashboard.security import COOKIE, Session, sign, unsign
from cloud.dashboard.users import UserStore, allowed
from cloud.registry.audit import AuditLog
from tests.dashutil import client_for, csrf_of, make_cfg, password_for, seed_users, sign_in


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = make_cfg(tmp_path)
    seed_users(c)
    return c


def test_pages_need_sign_in(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    for path in ("/", "/models", "/rollouts", "/alerts", "/labelling", "/quality", "/lineage", "/audit"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path


def test_sign_in_wrong_password_then_right(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"username": "viewer", "password": "nope-nope-nope", "csrf_token": token})
    assert r.status_code == 401 and "wrong" in r.text
    r = c.post("/login", data={"username": "ghost", "password": "whatever-long", "csrf_token": token})
    assert r.status_code == 401
    sign_in(c, "viewer")
    r = c.get("/audit")
    assert r.status_code == 200 and "viewer" in r.text and "Sign out" in r.text


def test_login_form_without_csrf_is_refused(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    c.get("/login")
    r = c.post("/login", data={"username": "admin", "password": password_for("admin")})
    assert r.status_code == 403 and "security token" in r.text


def test_session_rotates_token_and_forged_cookie_is_ignored(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    before = csrf_of(c.get("/login").text)
    after = sign_in(c, "engineer")
    assert before != after
    forged = sign(Session(user="admin", epoch=1), b"some-other-secret-0000000000")
    c2 = client_for(cfg)
    c2.cookies.set(COOKIE, forged)
    assert c2.get("/audit", follow_redirects=False).status_code == 303


def test_password_change_ends_sessions(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    sign_in(c, "viewer")
    assert c.get("/audit").status_code == 200
    store = UserStore(cfg.paths.dashboard_db)
    store.set_password("viewer", "a-brand-new-password")
    assert c.get("/audit", follow_redirects=False).status_code == 303


def test_logout_needs_csrf_and_works(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = sign_in(c, "viewer")
    assert c.post("/logout").status_code == 403
    r = c.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/audit", follow_redirects=False).status_code == 303


def test_next_parameter_cannot_leave_the_site(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = csrf_of(c.get("/login").text)
    r = c.post(
        "/login",
        data={
            "username": "viewer",
            "password": password_for("viewer"),
            "csrf_token": token,
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"


def test_session_expiry_and_tamper() -> None:
    s = Session(user="a", epoch=1, issued=time.time() - 100)
    tok = sign(s, b"k" * 32)
    assert unsign(tok, b"k" * 32, max_age_s=1000) is not None
    assert unsign(tok, b"k" * 32, max_age_s=10) is None
    body, mac = tok.split(".")
    assert unsign(body[:-2] + "xx." + mac, b"k" * 32, 1000) is None


def test_session_signature_is_bound_to_the_secret_and_its_purpose() -> None:
    """A token the same secret signed for another purpose, or a bare HMAC of the body (the
    format before itsdangerous), is not a session; nor is a body without the right fields."""
    import base64
    import hashlib
    import hmac
    import json

    from itsdangerous import Signer

    key = b"k" * 32
    good = sign(Session(user="a", epoch=1), key)
    assert unsign(good, key, 1000) is not None
    assert unsign(good, b"j" * 32, 1000) is None
    body = good.rsplit(".", 1)[0]
    other_purpose = Signer(key, salt=b"something-else", digest_method=hashlib.sha256).sign(body.encode())
    assert unsign(other_purpose.decode(), key, 1000) is None
    bare = base64.urlsafe_b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
    assert unsign(f"{body}.{bare.decode()}", key, 1000) is None
    for payload in (b"[1]", b"{}", b'{"i": 1}'):
        signed = Signer(key, salt=b"parkwatch.dashboard.session", digest_method=hashlib.sha256)
        tok = signed.sign(base64.urlsafe_b64encode(payload).rstrip(b"=")).decode()
        assert unsign(tok, key, 1000) is None, payload
    assert json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["u"] == "a"


def test_roles_permissions() -> None:
    assert allowed("approver", "approve") and allowed("admin", "approve")
    assert not allowed("engineer", "approve") and not allowed("viewer", "approve")
    assert allowed("engineer", "rollout") and not allowed("approver", "rollout")
    assert not allowed("viewer", "ack_alert") and not allowed("viewer", "label")
    assert not allowed("nobody", "view")


def test_user_store_rules(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "u.db")
    with pytest.raises(UserError, match="at least"):
        store.add("alice", "viewer", "short")
    with pytest.raises(UserError, match="unknown role"):
        store.add("alice", "king", "long-enough-password")
    with pytest.raises(UserError, match="lower-case"):
        store.add("Alice!", "viewer", "long-enough-password")
    u = store.add("alice", "viewer", "long-enough-password")
    with pytest.raises(UserError, match="exists"):
        store.add("alice", "viewer", "long-enough-password")
    assert store.authenticate("alice", "long-enough-password") == store.get("alice")
    assert store.authenticate("alice", "wrong-password!") is None
    stored = store.db.execute("SELECT pw_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and "long-enough" not in stored
    assert store.set_role("alice", "admin").session_epoch == u.session_epoch + 1


def test_users_cli_and_demo_user(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cloud.cli import cloud
    from cloud.dashboard.users import ensure_demo_user

    cfg_file = tmp_path / "cloud.toml"
    cfg_file.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    run = CliRunner()
    r = run.invoke(
        cloud,
        [
            "users",
            "add",
            "bob",
            "--role",
            "engineer",
            "--password",
            "bob-password-1",
            "--config",
            str(cfg_file),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    r = run.invoke(
        cloud,
        [
            "users",
            "add",
            "bob",
            "--role",
            "engineer",
            "--password",
            "bob-password-1",
            "--config",
            str(cfg_file),
        ],
    )
    assert r.exit_code == 1 and "exists already" in r.output
    r = run.invoke(
        cloud,
        ["users", "passwd", "bob", "--generate", "--role", "approver", "--config", str(cfg_file), "--json"],
    )
    assert r.exit_code == 0 and '"approver"' in r.output and '"password"' in r.output
    r = run.invoke(cloud, ["users", "list", "--config", str(cfg_file), "--json"])
    assert '"bob"' in r.output
    r = run.invoke(cloud, ["users", "remove", "bob", "--config", str(cfg_file)])
    assert r.exit_code == 0
    r = run.invoke(cloud, ["users", "remove", "bob", "--config", str(cfg_file)])
    assert r.exit_code == 1 and "no user" in r.output
    from cloud.config import load

    cfg = load(cfg_file)
    name, pw = ensure_demo_user(cfg)
    c = client_for(cfg)
    sign_in(c, name, pw)
    assert c.get("/models").status_code == 200
    actions = [e.action for e in AuditLog(cfg.paths.registry_db).entries()]
    assert actions.count("user.add") == 2 and "user.remove" in actions and "user.passwd" in actions


def test_repeated_wrong_passwords_are_throttled(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        r = c.post(
            "/login", data={"username": "approver", "password": "guess-guess-guess", "csrf_token": token}
        )
        assert r.status_code == 401
    r = c.post(
        "/login", data={"username": "approver", "password": password_for("approver"), "csrf_token": token}
    )
    assert r.status_code == 429 and "Too many wrong passwords" in r.text
    sign_in(c, "viewer")  # other users are not affected


def test_admin_manages_users_in_the_dashboard(cfg) -> None:  # type: ignore[no-untyped-def]
    import re

    viewer = client_for(cfg)
    tv = sign_in(viewer, "viewer")
    assert viewer.get("/users").status_code == 403
    assert (
        viewer.post("/users/add", data={"name": "zed", "role": "admin", "csrf_token": tv}).status_code == 403
    )
    admin = client_for(cfg)
    ta = sign_in(admin, "admin")
    assert 'href="/users"' in admin.get("/audit").text
    assert admin.post("/users/add", data={"name": "carol", "role": "engineer"}).status_code == 403  # no token
    r = admin.post("/users/add", data={"name": "carol", "role": "engineer", "csrf_token": ta})
    assert r.status_code == 200
    m = re.search(r"Password for <b>carol</b>: <code>([^<]+)</code>", r.text)
    assert m, "new password not shown"
    carol = client_for(cfg)
    sign_in(carol, "carol", m.group(1).replace("&#39;", "'"))
    assert carol.get("/models").status_code == 200
    admin.post("/users/carol/role", data={"role": "viewer", "csrf_token": ta})
    assert carol.get("/models", follow_redirects=False).status_code == 303  # role change ended her session
    r = admin.post("/users/admin/remove", data={"csrf_token": ta})
    assert "cannot remove yourself" in r.text
    r = admin.post("/users/carol/remove", data={"csrf_token": ta})
    assert "Removed carol" in r.text
    r = admin.post("/users/add", data={"name": "Bad Name", "role": "viewer", "csrf_token": ta})
    assert r.status_code == 400 and "lower-case" in r.text
    entries = [(e.actor, e.action) for e in AuditLog(cfg.paths.registry_db).entries(subject="user:carol")]
    assert entries == [("admin", "user.add"), ("admin", "user.role"), ("admin", "user.remove")]
