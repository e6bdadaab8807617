"""Text output for people: times in UTC ISO form, numbers rounded, dicts as ``key value`` pairs.

Why one module: the commands printed Python reprs (``{'lr': 0.001, ...}``) and unix times, which
a person cannot read at a glance; ``--json`` stays the exact form for machines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any


def utc(ts: float | str | None) -> str:
    """A unix time (or an ISO string, passed through) as ``2026-12-03 16:40:05 UTC``; ``-`` if none."""
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, str):
        return ts.replace("T", " ").replace("+00:00", " UTC")
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def num(v: Any, digits: int = 4) -> str:
    """A figure for reading: floats rounded, None as ``-``."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) < 10**-digits or abs(v) >= 1e6):
            return f"{v:.3g}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings as dotted ``(key, value)`` pairs; lists joined by commas."""
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += flat(v, f"{key}.") if v else [(key, "-")]
        elif isinstance(v, list | tuple):
            out.append((key, ", ".join(num(x) for x in v) if v else "-"))
        else:
            out.append((key, num(v)))
    return out


def pairs(d: Mapping[str, Any] | None, sep: str = ", ") -> str:
    """``a 1, b.c 2`` on one line, for short dicts."""
    if not d:
        return "-"
    return sep.join(f"{k} {v}" for k, v in flat(d))


def block(d: Mapping[str, Any] | None, indent: str = "    ") -> list[str]:
    """One ``key  value`` line per (flattened) entry, keys aligned, for longer dicts."""
    items = flat(d or {})
    if not items:
        return [f"{indent}-"]
    width = max(len(k) for k, _ in items)
    return [f"{indent}{k:<{width}}  {v}" for k, v in items]


def table(rows: Iterable[Iterable[Any]], header: Iterable[str], indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell."""
    head = [str(h) for h in header]
    body = [[num(c) for c in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    fmt = lambda r: indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    return [fmt(head), *(fmt(r) for r in body)]
