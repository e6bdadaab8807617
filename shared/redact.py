"""The one place that hides secrets in URLs before they are logged, shown or sent.

Camera URLs carry passwords two ways: ``rtsp://user:pass@host/...`` and query parameters such
as ``?user=admin&password=...`` (many IP cameras' MJPEG and snapshot URLs). Both are replaced by
``***`` here; :func:`redact_text` applies the same to every URL inside a message (an error from
FFmpeg or http.client may quote the URL it was given).
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
#: query keys whose values are secrets (compared lower-case, without - and _)
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "psw",
        "pw",
        "token",
        "accesstoken",
        "auth",
        "authorization",
        "key",
        "apikey",
        "secret",
        "signature",
        "sig",
        "credentials",
        "sessionid",
    }
)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")
_QUERY_PAIR = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def _secret_key(key: str) -> bool:
    k = urllib.parse.unquote_plus(key).lower().replace("-", "").replace("_", "")
    return k in SECRET_KEYS


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and secret query values replaced by ``***``."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    # user info ends at the last '@' before the path (a password may itself contain '@' or '/')
    cut = len(rest)
    for sep in "/?#":
        pos = rest.find(sep, rest.rfind("@") + 1 if "@" in rest else 0)
        if pos >= 0:
            cut = min(cut, pos)
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        creds, host = authority.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        authority = f"{user}:{MASK}@{host}" if ":" in creds else f"{user}@{host}"
    tail = _QUERY_PAIR.sub(lambda m: f"{m[1]}{m[2]}={MASK}" if _secret_key(m[2]) else m[0], tail)
    return f"{scheme}://{authority}{tail}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m[0]), text)
