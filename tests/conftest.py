"""Fixtures for real parts: a private Mosquitto, the sample data lake, temp state folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.broker import EmbeddedBroker, mosquitto_binary
from shared.paths import DATASETS_ENV, sample_lake

pytest_plugins = ["tests.fixtures_models", "tests.parallel"]


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


# PostgreSQL fleet store --------------------------------------------------------------------------
# The fleet, analysis, governance and dashboard tests run once per fleet backend: embedded SQLite
# (fleet.db) and a real PostgreSQL 15 (fleet.database_url). One cluster per session (initdb costs
# a second or two), one fresh database per test.
BOTH_BACKENDS = {
    "tests.test_fleet_ingest",
    "tests.test_fleet_materializer",
    "tests.test_fleet_feedback",
    "tests.test_fleet_serve",
    "tests.test_fleet_snapshots",
    "tests.test_analysis_drift",
    "tests.test_analysis_health",
    "tests.test_governance_actions",
    "tests.test_governance_alerts",
    "tests.test_dashboard_pages",
    "tests.test_health_offline",
    "tests.test_feedback_api",
    "tests.test_dashboard_perception",
    "tests.test_fleet_perception",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in BOTH_BACKENDS and "fleet_backend" in metafunc.fixturenames:
        only = getattr(metafunc.function, "fleet_backends", None)
        metafunc.parametrize("fleet_backend", only or ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL 15 on a free loopback port in a temp folder, stopped at the end."""
    from cloud.fleet.backends.pgserver import EmbeddedPostgres
    from cloud.fleet.errors import FleetError

    try:
        server = EmbeddedPostgres()
        server.start()
    except FleetError as e:
        pytest.fail(str(e), pytrace=False)  # never skip: the message says what to install
    try:
        yield server
    finally:
        server.cleanup()


_db_counter = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return str(pg_server.create_database(f"t{next(_db_counter)}"))


@pytest.fixture(autouse=True)
def fleet_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """'sqlite' or 'postgresql'; with the latter, every cloud config the test helpers build
    (tests/fleetutil.py, tests/dashutil.py) points fleet.database_url at a fresh database."""
    import tests.fleetutil as fu

    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        fu.PG_URL = request.getfixturevalue("pg_url")
    try:
        yield backend
    finally:
        fu.PG_URL = None


# Tests that need a live process beside the test (a broker, PostgreSQL, an RTSP server, a browser,
# a subprocess) or run torch are marked ``integration``; ``make test-fast`` leaves them and the slow ones out,
# for the edit-run loop. ``make test`` (CI) runs everything.
_LIVE_FIXTURES = {"broker", "pg_server", "pg_url", "baseline_package", "trained_package"}
_LIVE_MARKS = (
    "EmbeddedBroker",
    "subprocess",
    "playwright",
    "rtsp_server",
    "uvicorn",
    "systemd-nspawn",
    "cloud.training",  # trains or extracts features with torch: tens of seconds per test
    "cloud.packaging",
    '"train", "--dataset"',  # trains through the CLI (cloud train), which imports cloud.training
)
_module_is_live: dict[str, bool] = {}


def _live_module(path: Path) -> bool:
    key = str(path)
    if key not in _module_is_live:
        text = path.read_text(encoding="utf-8", errors="replace")
        _module_is_live[key] = any(m in text for m in _LIVE_MARKS)
    return _module_is_live[key]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("fleet_backend")
        if names & _LIVE_FIXTURES or backend == "postgresql" or _live_module(Path(str(item.fspath))):
            item.add_marker(pytest.mark.integration)
