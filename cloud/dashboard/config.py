from __future__ import annotations

from pydantic import Field

from shared.config import SecretRef, Section


class DashboardConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    session_secret: SecretRef | None = Field(None, description="signs session cookies; random if unset")
