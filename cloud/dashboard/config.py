"""The dashboard's section of the cloud config (``[dashboard]``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import SecretRef, Section
from shared.errors import SecretError

SESSION_SECRET_MIN = 16


def read_session_secret(ref: SecretRef) -> str:
    """``dashboard.session_secret``, refused if too short to sign cookies with (the dashboard at
    start and ``config check`` both read it through here)."""
    value = ref.resolve("dashboard.session_secret")
    if len(value) < SESSION_SECRET_MIN:
        raise SecretError(
            "<secret>",
            "dashboard.session_secret",
            f"the session secret needs at least {SESSION_SECRET_MIN} characters "
            "(e.g. `openssl rand -hex 32`)",
        )
    return value


class DashboardConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    session_secret: SecretRef | None = Field(
        None, description="signs session cookies; random per start if unset (everyone signs in again)"
    )
    users_db: Path | None = Field(None, description="local users; default <data_dir>/dashboard.db")
    session_max_age_s: int = Field(12 * 3600, ge=60, description="a sign-in lasts this long")
    secure_cookies: bool = Field(
        False, description="mark cookies Secure; set true when served over HTTPS (a reverse proxy)"
    )
    refresh_s: float = Field(5.0, ge=1.0, le=3600, description="how often live pages refresh themselves")
    page_size: int = Field(100, ge=10, le=1000, description="rows per page on long tables")
    snapshot_sites: list[str] = Field(
        default_factory=list,
        description="sites whose boxes may upload snapshots for labelling (GDPR: frames can show "
        "people); a snapshot from any other site is neither shown nor labelled",
    )
    snapshot_keep_days: float = Field(
        14.0, gt=0, description="snapshots older than this are not shown and are purged by fleet retention"
    )
    demo_user: str = Field("demo", description="the account `make demo` creates (role admin)")
