"""The files shipped to boxes and brokers point people at docs: those docs must exist.

Issue 15 D20: provisioning/mosquitto/parkwatch.conf sent operators to a docs/operations.md
that never existed. Every ``docs/NAME.md`` (and its quoted section heading, if given) named in
provisioning/ and systemd/ is checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REF = re.compile(r"docs/([\w.-]+\.md)(?:,?\s*#?\s*\"([^\"]+)\")?")


def shipped_files() -> list[Path]:
    return [p for d in ("provisioning", "systemd") for p in sorted((REPO / d).rglob("*")) if p.is_file()]


def test_every_doc_named_by_a_shipped_file_exists_with_its_section() -> None:
    refs = 0
    for f in shipped_files():
        text = re.sub(r"\n#\s*", " ", f.read_text(errors="replace"))
        for m in REF.finditer(text):
            doc = REPO / "docs" / m.group(1)
            assert doc.is_file(), f"{f.relative_to(REPO)} names docs/{m.group(1)}, which does not exist"
            if m.group(2):
                lines = doc.read_text().splitlines()
                headings = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#")]
                where = f"{f.relative_to(REPO)}: no section {m.group(2)!r} in {doc.name}"
                assert m.group(2) in headings, where
            refs += 1
    assert refs > 0
