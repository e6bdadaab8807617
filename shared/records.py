"""Typed records: what the stores return, and the one way they become JSON.

Stores hand out frozen dataclasses so a caller's typo is a type error instead of a ``KeyError``
at run time, and so both fleet backends (SQLite and PostgreSQL) answer with exactly the same
fields whatever their tables hold besides (PostgreSQL's partition ``day``, say). The CLI's
``--json`` and the dashboard's JSON turn them back into the dicts they always printed through
:func:`jsonable` alone, so the wire output does not depend on which type a store returned.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")
_NAMES: dict[type[Any], tuple[str, ...]] = {}  # field names per record class, in order


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """Base of every store record. A field whose JSON name is not a Python name (``from``) says
    so in its metadata: ``field(metadata={"json": "from"})``."""

    # Columns decoded from JSON text where the backend stores text.
    JSON_COLUMNS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_row(cls: type[R], row: Mapping[str, Any], **extra: Any) -> R:
        """The record of one row; columns the record does not name are ignored (a backend's own
        bookkeeping), a missing one without a default is an error naming it."""
        names = _NAMES.get(cls)
        if names is None:
            names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        try:
            # The fleet page reads every device: positional, no per-row field introspection.
            return cls(*[extra[n] if n in extra else row[n] for n in names])
        except KeyError:
            pass
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in extra:
                values[f.name] = extra[f.name]
            elif f.name in row:
                values[f.name] = row[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"{cls.__name__} needs column {f.name!r}; the row has {sorted(row)}")
        return cls(**values)

    @classmethod
    def from_rows(
        cls: type[R],
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        json_columns: Collection[str] = (),
    ) -> list[R]:
        """Records straight from a cursor's tuples (``columns`` its description's names): no
        dict per row, which halves what reading 10,000 devices for the fleet page costs. Text in
        ``json_columns`` is decoded; the record's fields must all be columns."""
        names = _NAMES.get(cls)
        if names is None:
            names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        try:
            at = [columns.index(n) for n in names]
        except ValueError:
            missing = [n for n in names if n not in columns]
            raise KeyError(
                f"{cls.__name__} needs column(s) {missing}; the rows have {list(columns)}"
            ) from None
        decode = [i for i, n in enumerate(names) if n in json_columns]
        out = []
        for row in rows:
            vals = [row[i] for i in at]
            for i in decode:
                if isinstance(vals[i], str):
                    vals[i] = json.loads(vals[i])
            out.append(cls(*vals))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            f.metadata.get("json", f.name): jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
        }


def jsonable(obj: Any) -> Any:
    """``obj`` with every :class:`Record` inside it (lists, tuples, dict values) as its dict."""
    if isinstance(obj, Record):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
