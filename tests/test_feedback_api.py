"""``POST /api/feedback`` as a JSON API through the real dashboard app over HTTP: JSON errors,
HTTP Basic for labelling tools (no browser, no CSRF token), and the browser session + CSRF path."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx2
import pytest

from cloud.fleet.store import FleetStore
from cloud.registry.audit import AuditLog
from tests.dashutil import client_for, make_cfg, password_for, seed_fleet, seed_users, sign_in

BODY = {"prediction_id": "box0000:3", "label": "dog"}


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = make_cfg(tmp_path)
    seed_users(c)
    seed_fleet(c, devices=1, hours=0.05, step_s=60, predictions=10)
    return c


def basic(name: str, password: str | None = None) -> dict[str, str]:
    raw = f"{name}:{password if password is not None else password_for(name)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def assert_json_error(r: httpx2.Response, status: int, words: str = "") -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    detail = r.json()["detail"]
    assert words.lower() in str(detail).lower(), detail
    return str(detail)


def test_without_credentials_the_answer_is_a_json_401(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    r = c.post("/api/feedback", json=BODY)
    assert_json_error(r, 401, "HTTP Basic")
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert FleetStore(cfg.fleet_store).feedback() == []


def test_labelling_tool_authenticates_with_http_basic(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    # No sign-in form, no cookie, no CSRF token; a claimed "actor" does not override the user.
    r = c.post(
        "/api/feedback", json={**BODY, "actor": "mallory", "comment": "tool"}, headers=basic("engineer")
    )
    assert r.status_code == 201, r.text
    assert r.json()["actor"] == "engineer" and r.json()["label"] == "dog"
    assert "set-cookie" not in r.headers  # a machine client is not handed a browser session
    [fb] = FleetStore(cfg.fleet_store).feedback()
    assert (fb.seq, fb.label, fb.actor) == (3, "dog", "engineer")
    last = AuditLog(cfg.paths.registry_db).entries()[-1]
    assert (last.actor, last.action, last.subject) == ("engineer", "feedback.label", "prediction:box0000:3")
    # Basic wins over an ambient cookie of another user, and needs no CSRF token either way.
    sign_in(c, "approver")
    r = c.post("/api/feedback", json={"prediction_id": "box0000:4", "label": "cat"}, headers=basic("admin"))
    assert r.status_code == 201 and r.json()["actor"] == "admin"


def test_basic_wrong_password_role_and_scheme_are_json(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    assert_json_error(
        c.post("/api/feedback", json=BODY, headers=basic("engineer", "wrong-password-1")), 401, "wrong"
    )
    assert_json_error(
        c.post("/api/feedback", json=BODY, headers=basic("ghost", "whatever-long")), 401, "wrong"
    )
    assert_json_error(c.post("/api/feedback", json=BODY, headers=basic("viewer")), 403, "label")
    bearer = {"Authorization": "Bearer abc"}
    assert_json_error(c.post("/api/feedback", json=BODY, headers=bearer), 401, "Basic")
    garbage = {"Authorization": "Basic !!!not-base64"}
    assert_json_error(c.post("/api/feedback", json=BODY, headers=garbage), 401, "base64")
    assert FleetStore(cfg.fleet_store).feedback() == []


def test_basic_guessing_is_throttled_like_the_sign_in_form(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    for _ in range(5):
        r = c.post("/api/feedback", json=BODY, headers=basic("engineer", "guess-guess-guess"))
        assert_json_error(r, 401)
    # Even the right password is refused now, for the API and for the form alike.
    r = c.post("/api/feedback", json=BODY, headers=basic("engineer"))
    assert_json_error(r, 429, "too many")
    assert int(r.headers["retry-after"]) > 0
    assert FleetStore(cfg.fleet_store).feedback() == []


def test_unknown_prediction_and_bad_input_are_json(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    auth = basic("engineer")
    r = c.post("/api/feedback", json={"prediction_id": "box0000:99999", "label": "cat"}, headers=auth)
    assert_json_error(r, 404, "not in the fleet store")
    r = c.post("/api/feedback", json={"prediction_id": "nocolon", "label": "cat"}, headers=auth)
    assert_json_error(r, 422, "DEVICE:SEQ")
    r = c.post("/api/feedback", json={"snapshot": "no-such-snap", "label": "cat"}, headers=auth)
    assert_json_error(r, 404, "no-such-snap")
    r = c.post("/api/feedback", json={"prediction_id": "box0000:3", "label": "horse"}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "label"]
    r = c.post("/api/other", json={}, headers=auth)
    assert_json_error(r, 404)


def test_form_encoded_bodies_are_refused(cfg) -> None:  # type: ignore[no-untyped-def]
    """What a cross-site HTML form could send with credentials a browser cached: not JSON."""
    c = client_for(cfg)
    r = c.post("/api/feedback", data=BODY, headers=basic("engineer"))
    assert_json_error(r, 415, "application/json")
    r = c.post(
        "/api/feedback",
        content=b'{"prediction_id": "box0000:3", "label": "dog"}',
        headers={**basic("engineer"), "Content-Type": "text/plain"},
    )
    assert_json_error(r, 415)
    assert FleetStore(cfg.fleet_store).feedback() == []


def test_browser_session_still_needs_its_csrf_token(cfg) -> None:  # type: ignore[no-untyped-def]
    c = client_for(cfg)
    token = sign_in(c, "engineer")
    assert_json_error(c.post("/api/feedback", json=BODY), 403, "X-CSRF-Token")
    assert_json_error(c.post("/api/feedback", json=BODY, headers={"X-CSRF-Token": "stale"}), 403, "CSRF")
    r = c.post("/api/feedback", json=BODY, headers={"X-CSRF-Token": token})
    assert r.status_code == 201 and r.json()["actor"] == "engineer"
    assert AuditLog(cfg.paths.registry_db).entries()[-1].actor == "engineer"
    v = client_for(cfg)
    token = sign_in(v, "viewer")
    assert_json_error(v.post("/api/feedback", json=BODY, headers={"X-CSRF-Token": token}), 403, "viewer")
    # The HTML pages keep their HTML errors and the app-wide CSRF guard.
    r = c.post("/logout")
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
