"""The docs are checked against the code, in the style of sqlite-utils' ``test_docs.py``.

Every ``parkwatch …`` command line written in ``docs/*.md`` and ``README.md`` must name commands
that exist (resolved through the real click groups, so a renamed command or option fails here, not
in an operator's shell), and every ``--option`` it uses must be one that command takes. Every
config key the docs name (``[fleet] retention_days``, ``fleet.retention_days``, keys in
```` ```toml ```` blocks) must exist in the pydantic config models (``cloud.config.CloudConfig``,
``edge.config.EdgeConfig``). Pure: nothing runs but click's and pydantic's own introspection.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from cloud.config import CloudConfig
from edge.config import EdgeConfig
from shared.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
MODELS: dict[str, type[BaseModel]] = {"cloud": CloudConfig, "edge": EdgeConfig}


# --- where the docs name commands ---------------------------------------------------------------
@dataclass(frozen=True)
class Mention:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


_FENCE = re.compile(r"^\s*```(\w*)")
_INLINE = re.compile(r"`([^`\n]+)`")


def _blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of every fenced block."""
    out, lang, start, body = [], None, 0, []  # type: ignore[var-annotated]
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m and lang is None:
            lang, start, body = m.group(1), n + 1, []
        elif line.strip().startswith("```") and lang is not None:
            out.append((lang, start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced blocks, with their numbers."""
    out, inside = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside:
            out.append((n, line))
    return out


def command_mentions() -> list[Mention]:
    """Every ``parkwatch …`` command line: inline code spans and lines of fenced blocks."""
    found: list[Mention] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        for n, line in _prose_lines(text):
            for span in _INLINE.findall(line):
                for m in re.finditer(r"(?:^|[\s(;&|$])(parkwatch\s+[^;&|)]*)", span):
                    found.append(Mention(name, n, m.group(1).strip()))
        for lang, start, body in _blocks(text):
            if lang not in ("", "sh", "bash", "shell", "console"):
                continue
            for i, line in enumerate(body.splitlines()):
                code = line.split(" #", 1)[0]
                for m in re.finditer(r"(?:^|[\s(;&|$`])(parkwatch\s+[^;&|)`]*)", code):
                    found.append(Mention(name, start + i, m.group(1).strip()))
    return found


def _placeholder(token: str) -> bool:
    """A word standing for something the reader fills in (``DIR``, ``<version>``, ``…``, ``...``)."""
    return (
        "…" in token
        or "..." in token
        or token.startswith(("<", "[", "{", "$", "'", '"', "/", ".", "~"))
        or token.isupper()
        or any(c.isdigit() for c in token[:1])
    )


def check_command(words: list[str]) -> str | None:
    """None when ``parkwatch WORDS`` names real commands and options, else what is wrong."""
    cmd: click.Command = main
    ctx = click.Context(main, info_name="parkwatch")
    path = ["parkwatch"]
    i = 0
    while i < len(words) and isinstance(cmd, click.Group):
        word = words[i]
        if word.startswith("-"):
            break
        if _placeholder(word):
            return None  # `parkwatch cloud …`: a family of commands, not one
        choices = word.split("/")  # `approve/reject/rollout/rollback`
        subs = [cmd.get_command(ctx, c) for c in choices]
        if any(s is None for s in subs):
            missing = [c for c, s in zip(choices, subs, strict=True) if s is None]
            return f"{' '.join(path)} has no command {missing[0]!r}"
        if len(subs) > 1:
            return None if all(s is not None for s in subs) else "unreachable"
        assert subs[0] is not None
        cmd = subs[0]
        ctx = click.Context(cmd, info_name=word, parent=ctx)
        path.append(word)
        i += 1
    known = {opt for p in cmd.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
    for word in words[i:]:
        if word.startswith("--") and len(word) > 2:
            opt = word.split("=", 1)[0]
            if opt not in known:
                return f"{' '.join(path)} has no option {opt} (it takes {', '.join(sorted(known))})"
    return None


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"\s+", text.replace("\\", " ")) if w]


MENTIONS = command_mentions()


def test_the_docs_name_commands_at_all() -> None:
    """Guards the extractor: if it finds nothing, every other test here passes vacuously."""
    assert len(MENTIONS) > 50
    assert any(m.text.startswith("parkwatch cloud ingest") for m in MENTIONS)


@pytest.mark.parametrize("mention", MENTIONS, ids=str)
def test_documented_command_exists(mention: Mention) -> None:
    problem = check_command(_words(mention.text)[1:])
    assert problem is None, f"{mention}: {problem}"


def test_a_wrong_command_or_option_is_caught() -> None:
    """The checker itself fails on what it must catch (else a broken doc would pass)."""
    assert check_command(["cloud", "ingest", "./lake"]) is None
    assert check_command(["cloud", "ingest", "./lake", "--json"]) is None
    assert "no command 'ingset'" in str(check_command(["cloud", "ingset", "./lake"]))
    assert "no option --no-such" in str(check_command(["cloud", "ingest", "--no-such"]))
    assert "no command 'nope'" in str(check_command(["cloud", "approve/nope"]))


@pytest.mark.parametrize("path", [["edge"], ["cloud"], ["cloud", "users"], ["cloud", "ingest"]])
def test_help_parses(path: list[str]) -> None:
    """``--help`` answers for the groups and a command the docs lean on most."""
    from click.testing import CliRunner

    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output


# --- where the docs name config keys ------------------------------------------------------------
def _model_of(annotation: object) -> type[BaseModel] | bool | None:
    """The pydantic model a field holds (through Optional, list[...] and dict[str, ...]);
    True for a mapping whose keys are free (names the user picks), None for a plain value."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found = [_model_of(a) for a in typing.get_args(annotation) if a is not type(None)]
        models = [f for f in found if f not in (None, False)]
        return models[0] if models else None
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return _model_of(args[0]) if args else None
    if origin is dict:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def key_exists(model: type[BaseModel], path: list[str]) -> bool:
    """Does ``a.b.c`` name a field (or a sub-field) of ``model``?"""
    current: type[BaseModel] | bool | None = model
    for part in path:
        if current is True:
            return True  # a free-form mapping: `governance.rules.<rule>` and below
        if not isinstance(current, type):
            return False
        fields = current.model_fields
        by_alias = {f.alias: f for f in fields.values() if f.alias}
        field = fields.get(part) or by_alias.get(part)
        if field is None:
            return False
        current = _model_of(field.annotation)
    return True


def _in_some_model(path: list[str]) -> bool:
    return any(key_exists(m, path) for m in MODELS.values())


@dataclass(frozen=True)
class KeyMention:
    doc: str
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.key}"


_SECTIONS = {
    name
    for m in MODELS.values()
    for name, f in m.model_fields.items()
    if _model_of(f.annotation) not in (None, False)
}
# `[fleet] retention_days`, `[release] watch_window_s`
_BRACKETED = re.compile(r"^\[\[?([a-z_][a-z0-9_.]*)\]\]?\s+([a-z_][a-z0-9_]*)")
# `fleet.retention_days`, `analysis.min_samples = 50`
_DOTTED = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?:\s*=.*)?$")


# Dotted names that look like keys but are not ours: file names, and the few others, each with why.
_FILE_SUFFIXES = {"db", "py", "onnx", "json", "toml", "md", "sh", "conf", "jpg", "html", "txt", "gz", "j2"}
NOT_KEYS = {
    "model.registered": "an audit-log action (docs/cloud-engineer-build.md)",
    "mqtt.max_mqueue_len": "EMQX's own setting, named in docs/cluster.md",
    "mqtt.mqueue_store_qos0": "EMQX's own setting, named in docs/cluster.md",
}


def _is_key(dotted: str) -> bool:
    return dotted.split(".")[0] in _SECTIONS and dotted.rsplit(".", 1)[1] not in _FILE_SUFFIXES


def key_mentions() -> list[KeyMention]:
    found: list[KeyMention] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        for n, line in _prose_lines(text):
            for span in _INLINE.findall(line):
                span = span.strip()
                m = _BRACKETED.match(span)
                if m and m.group(1).split(".")[0] in _SECTIONS:
                    found.append(KeyMention(name, n, f"{m.group(1)}.{m.group(2)}"))
                    continue
                m = _DOTTED.match(span)
                if m and _is_key(m.group(1)) and m.group(1) not in NOT_KEYS:
                    found.append(KeyMention(name, n, m.group(1)))
        for lang, start, body in _blocks(text):
            if lang != "toml":
                continue
            for key in _toml_keys(body, f"{name}:{start}"):
                found.append(KeyMention(name, start, key))
    return found


def _toml_keys(body: str, where: str) -> list[str]:
    try:
        data = tomllib.loads(body)
    except tomllib.TOMLDecodeError as e:
        pytest.fail(f"{where}: the ```toml block does not parse ({e}); fix it or mark it as text")
    out: list[str] = []

    def walk(d: dict[str, object], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.append(key)
            if isinstance(v, dict):
                walk(v, key + ".")
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for x in v:
                    walk(x, key + ".")

    walk(data, "")
    return out


KEYS = key_mentions()


def test_the_docs_name_config_keys_at_all() -> None:
    assert len(KEYS) > 30
    assert any(k.key.startswith("fleet.") for k in KEYS)


@pytest.mark.parametrize("mention", KEYS, ids=str)
def test_documented_config_key_exists(mention: KeyMention) -> None:
    assert _in_some_model(mention.key.split(".")), (
        f"{mention}: no such key in cloud.config.CloudConfig or edge.config.EdgeConfig"
    )


def test_a_wrong_config_key_is_caught() -> None:
    assert key_exists(CloudConfig, ["fleet", "retention_days"])
    assert key_exists(EdgeConfig, ["cameras", "zones", "rect"])
    assert not key_exists(CloudConfig, ["fleet", "retention_dayz"])
    assert not _in_some_model(["analysis", "no_such_key"])
