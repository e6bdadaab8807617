"""Signed session cookies and CSRF tokens: pure functions, no I/O, so they are tested alone.

A session is a small JSON payload (user, sign-in time, the user's session epoch, a CSRF token)
signed with HMAC-SHA256 under the dashboard secret. Nothing secret is inside it; the signature
is what stops a visitor from editing it. Every visitor, signed in or not, gets a session with a
CSRF token, so even the sign-in form is protected (synchronizer-token pattern).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "parkwatch_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass
class Session:
    user: str | None = None
    epoch: int = 0
    issued: float = field(default_factory=time.time)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    flash: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"u": self.user, "e": self.epoch, "i": self.issued, "c": self.csrf, "f": self.flash}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(session: Session, secret: bytes) -> str:
    body = _b64(json.dumps(session.to_dict(), separators=(",", ":")).encode("utf-8"))
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(token: str, secret: bytes, max_age_s: float, now: float | None = None) -> Session | None:
    """The session in ``token`` if its signature is good and it is not older than ``max_age_s``."""
    try:
        body, mac = token.split(".", 1)
        expected = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        d = json.loads(_unb64(body))
        s = Session(
            user=d.get("u"),
            epoch=int(d.get("e", 0)),
            issued=float(d["i"]),
            csrf=str(d["c"]),
            flash=d.get("f"),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    now = time.time() if now is None else now
    if s.user is not None and now - s.issued > max_age_s:
        return None
    if not s.csrf:
        return None
    return s


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf.encode(), (submitted or "").encode())
