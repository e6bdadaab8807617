"""Config primitives shared by the edge and cloud trees.

Each side has one pydantic tree with ``extra="forbid"`` loaded from TOML. Errors name the file,
the dotted key and the problem, so ``parkwatch … config check`` can print them and exit 2.
Secrets never sit in the TOML: a config names an environment variable or a file holding them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ConfigError, SecretError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base for every config section: unknown keys are typos, and typos are errors."""

    # Non-finite numbers are refused: `inf` passes gt=0 and then turns a window into -Infinity.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class SecretRef(Section):
    """Where a secret lives: an environment variable, a file, or both (env wins).

    Inline values are refused on purpose so secrets never end up in a repo or a backup of /etc.
    """

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if self.env is None and self.file is None:
            raise ValueError("name an environment variable (env = ...) or a file (file = ...)")
        return self

    def resolve(self, key: str = "secret") -> str:
        """Read the secret now; raises :class:`SecretError` saying where it looked."""
        if self.env:
            value = os.environ.get(self.env)
            if value:
                return value.strip()
            if self.file is None:
                raise SecretError("<environment>", key, f"environment variable {self.env} is not set")
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise SecretError(str(self.file), key, f"cannot read secret file: {e.strerror}") from e


class TLSConfig(Section):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_hostname_check: bool = False


class MqttConfig(Section):
    """How a side reaches the broker. Defaults suit the one-box demo on loopback."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretRef | None = None
    tls: TLSConfig | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    client_id: str | None = None
    max_payload_bytes: int = Field(2 * 1024 * 1024, ge=1024)


def dotted(loc: tuple[Any, ...]) -> str:
    """``cameras[1].url`` for the first ``[[cameras]]`` block: positions count from 1, as a
    person counts the blocks in the file."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item + 1}]"] if parts else [f"[{item + 1}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "<root>"


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            str(p), "<file>", "no such file; pass --config PATH or create it from provisioning/*.example.toml"
        ) from e
    except OSError as e:
        raise ConfigError(str(p), "<file>", f"cannot read: {e.strerror}") from e
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), "<file>", "not UTF-8 text") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), "<syntax>", f"invalid TOML: {e}") from e


def validate_config(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` against ``model``; the first error becomes a :class:`ConfigError`.

    All problems are listed in the message so a user fixes the file in one pass.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        problems = "; ".join(f"{dotted(err['loc'])}: {_explain(err)}" for err in errors[1:])
        msg = _explain(first) + (f" (also: {problems})" if problems else "")
        raise ConfigError(source, dotted(first["loc"]), msg) from e


def _explain(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling against provisioning/*.example.toml)"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])


def load_config(model: type[M], path: str | os.PathLike[str]) -> M:
    return validate_config(model, load_toml(path), str(path))
