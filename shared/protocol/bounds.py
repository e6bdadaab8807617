"""Bounds on what a device may send, checked by ``decode`` after the schema: pure, no I/O.

The models say what a field *is*; these say how much of it a receiver will take. They live
apart from the models on purpose: the edge builds the same models from its own clock and
config, and must never fail to build a message because its clock is wrong. Only a receiver
refuses (counted as ``invalid``):

* timestamps outside [2000-01-01, now + ``MAX_FUTURE_SKEW_S``] (a prediction with ts=1e300
  crashed lineage; telemetry with ts=1e12 broke the device page);
* camera names and snapshot ids that are not ids (1–64 characters of letters, digits, ``.``,
  ``_``, ``-``; snapshot ids up to 128) — they end up in file names, globs and pages;
* unbounded maps and lists (``probs`` keys, cameras per box, temperatures, flags) and long
  free texts (a 1.5 MB camera name was stored; 60,000 cameras made a 2.8 MB fleet page).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

EARLIEST_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_FUTURE_SKEW_S = 86_400.0  # a box's clock may run a day ahead, not more
MAX_KEYS = 64  # entries in any map a device sends (probs, cameras, temperatures, ...)
MAX_LIST = 256  # entries in any list of numbers or flags (cpu_per_core, flags, ...)
MAX_NAME = 64  # map keys, labels, versions
MAX_TEXT = 2_000  # free texts (reasons, camera errors)
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Which fields of which message are timestamps set by the device.
_TS_FIELDS = ("ts", "sent_ts")
_TEXT_FIELDS = (
    "reason",
    "error",
    "software",
    "group",
    "model_version",
    "version",
    "active_version",
    "previous_version",
)


def check_ts(value: float | None, where: str, now: float) -> str | None:
    if value is None:
        return None
    if value < EARLIEST_TS or value > now + MAX_FUTURE_SKEW_S:
        return (
            f"{where}: timestamp {value!r} is outside 2000-01-01 .. now + {MAX_FUTURE_SKEW_S:.0f} s; "
            "check the box's clock (NTP)"
        )
    return None


def _keys(m: Mapping[str, Any], where: str, id_keys: bool = False) -> str | None:
    if len(m) > MAX_KEYS:
        return f"{where}: {len(m)} entries, at most {MAX_KEYS}"
    for k in m:
        if id_keys and not ID.match(k):
            return f"{where}: {k[:80]!r} is not an id (1-64 letters, digits, '.', '_', '-')"
        if not 1 <= len(k) <= MAX_NAME:
            return f"{where}: key of {len(k)} characters, 1-{MAX_NAME} allowed"
    return None


def _list(v: Iterable[Any], where: str) -> str | None:
    n = len(list(v))
    return f"{where}: {n} entries, at most {MAX_LIST}" if n > MAX_LIST else None


def _texts(msg: Any, where: str) -> str | None:
    for name in _TEXT_FIELDS:
        v = getattr(msg, name, None)
        if isinstance(v, str):
            limit = MAX_NAME if "version" in name or name == "group" else MAX_TEXT
            if len(v) > limit:
                return f"{where}.{name}: {len(v)} characters, at most {limit}"
    return None


def prediction_problem(p: Any, where: str, now: float) -> str | None:
    """Why one prediction is out of bounds, spelled out (None: within)."""
    checks = [
        check_ts(p.ts, f"{where}.ts", now),
        check_ts(p.frame_ts, f"{where}.frame_ts", now),
        None if ID.match(p.camera) else f"{where}.camera: {p.camera[:80]!r} is not an id",
        None if len(p.label) <= MAX_NAME else f"{where}.label: longer than {MAX_NAME}",
        _keys(p.probs, f"{where}.probs"),
        _list(p.flags, f"{where}.flags"),
        None if all(len(f) <= MAX_NAME for f in p.flags) else f"{where}.flags: a flag over {MAX_NAME}",
        None if len(p.model_version) <= MAX_NAME else f"{where}.model_version: longer than {MAX_NAME}",
        None
        if p.snapshot is None or SNAPSHOT_ID.match(p.snapshot)
        else f"{where}.snapshot: {p.snapshot[:80]!r} is not a snapshot id",
    ]
    return next((c for c in checks if c), None)


def prediction_within(p: Any, lo: float, hi: float) -> bool:
    """The same bounds as :func:`prediction_problem` as one predicate, without building any text.

    Why two spellings of one rule: the materializer decodes every prediction the fleet sends, and
    building nine messages per prediction only to find them all empty was three quarters of its
    decoding time. The predicate is the hot path; the spelled-out check runs only for a
    prediction the predicate refuses, to say why (a test holds the two to the same answers).
    """
    ts, fts, snap = p.ts, p.frame_ts, p.snapshot
    return (
        lo <= ts <= hi
        and (fts is None or lo <= fts <= hi)
        and ID.match(p.camera) is not None
        and len(p.label) <= MAX_NAME
        and len(p.probs) <= MAX_KEYS
        and all(1 <= len(k) <= MAX_NAME for k in p.probs)
        and len(p.flags) <= MAX_LIST
        and all(len(f) <= MAX_NAME for f in p.flags)
        and len(p.model_version) <= MAX_NAME
        and (snap is None or SNAPSHOT_ID.match(snap) is not None)
    )


def problem(msg: Any, now: float) -> str | None:
    """Why a device-sent message is out of bounds (None: within). Works on any v1 model.

    The first problem in a fixed order: the message's own timestamps and texts, then each
    prediction in order, then cameras, maps and lists."""
    for name in _TS_FIELDS:
        if hasattr(msg, name) and (c := check_ts(getattr(msg, name), name, now)):
            return c
    if c := _texts(msg, type(msg).__name__):
        return c
    lo, hi = EARLIEST_TS, now + MAX_FUTURE_SKEW_S
    for i, p in enumerate(getattr(msg, "predictions", None) or []):
        if not prediction_within(p, lo, hi):
            return prediction_problem(p, f"predictions[{i}]", now) or f"predictions[{i}]: out of bounds"
    checks: list[str | None] = []
    cameras = getattr(msg, "cameras", None)
    if isinstance(cameras, Mapping):
        checks.append(_keys(cameras, "cameras", id_keys=True))
        for name, cam in list(cameras.items())[:MAX_KEYS]:
            checks += [
                check_ts(cam.last_frame_ts, f"cameras.{name}.last_frame_ts", now),
                _keys(cam.integrity, f"cameras.{name}.integrity"),
                None
                if cam.error is None or len(cam.error) <= MAX_TEXT
                else f"cameras.{name}.error: longer than {MAX_TEXT}",
            ]
    for name in ("temperatures", "latency_ms", "invalid_messages"):
        v = getattr(msg, name, None)
        if isinstance(v, Mapping):
            checks.append(_keys(v, name))
    for name in ("cpu_per_core", "load_avg"):
        v = getattr(msg, name, None)
        if isinstance(v, list):
            checks.append(_list(v, name))
    camera = getattr(msg, "camera", None)
    if isinstance(camera, str) and not ID.match(camera):
        checks.append(f"camera: {camera[:80]!r} is not an id")
    return next((c for c in checks if c), None)
