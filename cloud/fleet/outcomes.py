"""What a stored prediction says about its frame: a pet, ``none`` or ``abstain``; day or IR.

Three outcomes that must never be added up as one another: a pet label (``cat``, ``dog``) means
the box saw that animal; ``none`` means it is *sure* the frame holds no pet (issue 11); ``abstain``
means it was unsure and declined. Counts of cats and dogs are the pet outcomes only, and the
lighting mode of a frame comes from its ``ir`` column (NULL when an older box did not say).

Pure functions and constants only, shared by the fleet store, the analysis, the CLI and the
dashboard so they all count the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.protocol import NONE_LABEL

NONE = NONE_LABEL
ABSTAIN = "abstain"
# The operator label for "no cat or dog in this frame" before the model had a ``none`` class.
# Still accepted on input (scripts, old rows) and read as ``none``: the same claim about the frame.
LEGACY_NONE = "neither"
PETS = ("cat", "dog")
FEEDBACK_LABELS = (*PETS, NONE)
FEEDBACK_INPUT = (*FEEDBACK_LABELS, LEGACY_NONE)

DAY = "day"
IR = "ir"
MODES = (DAY, IR)


def canonical_label(label: str) -> str:
    """An operator's label as stored and compared: ``neither`` becomes ``none``."""
    return NONE if label == LEGACY_NONE else label


def outcome(label: str, abstain: bool | int | None = False) -> str:
    """``abstain``, ``none`` or the pet label of one prediction."""
    if abstain or label == ABSTAIN:
        return ABSTAIN
    return NONE if label in (NONE, LEGACY_NONE) else label


def is_pet(label: str, abstain: bool | int | None = False) -> bool:
    return outcome(label, abstain) not in (NONE, ABSTAIN)


def mode_of(ir: bool | int | None) -> str | None:
    """``day``, ``ir``, or None when the box did not report the lighting."""
    if ir is None:
        return None
    return IR if ir else DAY


def summarize(rows: Iterable[tuple[str, Any, Any, int]]) -> dict[str, Any]:
    """Counts from ``(label, abstain, ir, n)`` groups: every outcome apart, pets apart from ``none``.

    ``pets`` (cats plus dogs) never includes ``none`` or ``abstain``; ``ir_share`` is over the
    frames whose lighting is known, None when no frame said.
    """
    by: dict[str, int] = {}
    total = ir_n = day_n = 0
    for label, abstain, ir, n in rows:
        o = outcome(str(label), abstain)
        by[o] = by.get(o, 0) + int(n)
        total += int(n)
        if ir is not None:
            if ir:
                ir_n += int(n)
            else:
                day_n += int(n)
    pets = {k: v for k, v in sorted(by.items()) if k not in (NONE, ABSTAIN)}
    for p in PETS:
        pets.setdefault(p, 0)
    known = ir_n + day_n
    return {
        "total": total,
        "pets": dict(sorted(pets.items())),
        "pet_total": sum(pets.values()),
        "none": by.get(NONE, 0),
        "abstain": by.get(ABSTAIN, 0),
        "ir": ir_n,
        "day": day_n,
        "lighting_unknown": total - known,
        "ir_share": ir_n / known if known else None,
    }


def regions_text(regions: list[dict[str, Any]] | None, limit: int | None = None) -> str:
    """``cat 0.93 at (12,40 200x180); dog …`` for the CLI and the dashboard's tables; at most
    ``limit`` regions, then how many more (a tiled frame can hold a pet in many tiles)."""
    if not regions:
        return ""
    out = []
    for r in regions[:limit]:
        box = r.get("box") or []
        where = f" at ({box[0]},{box[1]} {box[2]}x{box[3]})" if len(box) == 4 else ""
        conf = r.get("confidence")
        out.append(f"{r.get('label', '?')}{f' {conf:.2f}' if isinstance(conf, (int, float)) else ''}{where}")
    more = len(regions) - len(out)
    return "; ".join(out) + (f" (+{more} more)" if more > 0 else "")
