"""After a reboot: mosquitto and the cloud start by themselves (both enabled)."""

from __future__ import annotations

from typing import Any

from cloud_boot1 import services_up
from common import run_checks


def body(r: dict[str, Any]) -> None:
    services_up(r, "boot")


if __name__ == "__main__":
    run_checks("cloud_boot2", body)
