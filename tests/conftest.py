"""Fixtures for real parts: a private Mosquitto, the sample data lake, temp state folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.broker import EmbeddedBroker, mosquitto_binary
from shared.paths import DATASETS_ENV, sample_lake

pytest_plugins = ["tests.fixtures_models"]


@pytest.fixture(scope="session")
def _mosquitto_installed() -> None:
    # Never skip: a missing broker is a broken machine, and the message says how to fix it.
    mosquitto_binary()


@pytest.fixture
def broker(tmp_path: Path, _mosquitto_installed: None) -> Iterator[EmbeddedBroker]:
    """A fresh Mosquitto on a free loopback port, configured with provisioning/mosquitto/."""
    b = EmbeddedBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def pets_sample() -> Path:
    lake = sample_lake()
    if not (lake / "cat").is_dir() or not (lake / "dog").is_dir():
        pytest.fail(
            f"sample data lake not found at {lake}: put ../shared/datasets beside the checkout "
            f"or set {DATASETS_ENV} to the folder holding pets-sample/",
            pytrace=False,
        )
    return lake
