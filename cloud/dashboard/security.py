"""Signed session cookies and CSRF tokens: pure functions, no I/O, so they are tested alone.

A session is a small JSON payload (user, sign-in time, the user's session epoch, a CSRF token)
signed by ``itsdangerous`` (HMAC-SHA256 under a key derived from the dashboard secret and a
salt of its own, so a signature made for anything else the secret might sign never passes as a
session). Nothing secret is inside it; the signature is what stops a visitor from editing it.
Every visitor, signed in or not, gets a session with a CSRF token, so even the sign-in form is
protected (synchronizer-token pattern).

Why not Starlette's ``SessionMiddleware``: it measures age from the last time the cookie was
written, which here happens on every flash message, so a session would never expire while it is
used. Expiry counts from the sign-in (``issued`` in the payload), and a signed-in session also
needs the user's current epoch (``app.py``), neither of which that middleware can check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

from itsdangerous import BadData, Signer

COOKIE = "parkwatch_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SALT = b"parkwatch.dashboard.session"


@dataclass
class Session:
    user: str | None = None
    epoch: int = 0
    issued: float = field(default_factory=time.time)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    flash: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"u": self.user, "e": self.epoch, "i": self.issued, "c": self.csrf, "f": self.flash}


def _signer(secret: bytes) -> Signer:
    return Signer(secret, salt=_SALT, digest_method=hashlib.sha256)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def sign(session: Session, secret: bytes) -> str:
    """``<base64 JSON>.<signature>``: cookie-safe characters only, never compressed."""
    body = _b64(json.dumps(session.to_dict(), separators=(",", ":")).encode("utf-8"))
    return _signer(secret).sign(body).decode("ascii")


def unsign(token: str, secret: bytes, max_age_s: float, now: float | None = None) -> Session | None:
    """The session in ``token`` if its signature is good and it is not older than ``max_age_s``.

    The age counts from the sign-in, not from when the cookie was last written. A session
    nobody signed into (only a CSRF token) does not expire here; the cookie's own max-age ends it.
    """
    try:
        body = _signer(secret).unsign(token.encode("ascii"))
        d = json.loads(_unb64(body))
        s = Session(
            user=d.get("u"),
            epoch=int(d.get("e", 0)),
            issued=float(d["i"]),
            csrf=str(d["c"]),
            flash=d.get("f"),
        )
    except (BadData, ValueError, KeyError, TypeError, AttributeError, UnicodeError):
        return None
    now = time.time() if now is None else now
    if s.user is not None and now - s.issued > max_age_s:
        return None
    if not s.csrf:
        return None
    return s


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf.encode(), (submitted or "").encode())
