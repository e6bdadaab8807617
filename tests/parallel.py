"""How the suite splits over pytest-xdist workers (``make test``: ``-n auto --dist loadgroup``).

Registered from tests/conftest.py via ``pytest_plugins``. It changes nothing in a serial run:
every rule below applies only when xdist distributes with ``--dist loadgroup``, and then it
decides only *where* and *in which order* tests run, never what they do.

- A module with a module-scoped fixture (a training run, a browser, a built data folder) runs
  whole on one worker, so that fixture is built once, as in a serial run.
- The full-sample trainings share one worker (group ``training``): two torch trainings never
  compete for the cores, and the second finds the backbone features of the cat/dog images in
  the feature cache the first one filled.
- ``@pytest.mark.xdist_group(name)`` still puts tests on one worker.
- The longest work goes first, so no worker is left alone with a long test at the end: the
  ``training`` group (the longest unit: two full-sample trainings), then the other slow tests
  by their timeout mark (the longest bound first), then the modules grouped for a module
  fixture (the bigger units: test_train.py trains in one), then the rest in file order.

Why not xdist's own ``loadgroup``: it groups by a suffix it writes into ``item._nodeid``, which
pytest 9 no longer reads (node ids live in ``item._id``), so its groups are silently ignored.
Here the workers write their grouping to a file the controller's scheduler reads instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Test modules that must share one worker, beyond what module-scoped fixtures already group.
SHARED_WORKER = {
    "test_train_full.py": "training",
    "test_perception_full.py": "training",
}
# Scopes that start before everything else: measured the longest (about 19 of the slow tests'
# 48 minutes in a serial run on the loaded 2-core machine).
FIRST = ("training",)
SCOPES_KEY = "parkwatch_scopes_dir"  # workerinput: the folder the workers write their grouping to


def _module_scoped(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


def _timeout(item: pytest.Item, default: float) -> float:
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        return float(mark.args[0])
    return default


def _group(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    module = Path(str(item.fspath)).name
    if module in SHARED_WORKER:
        return SHARED_WORKER[module]
    return module if _module_scoped(item) else None


def _scopes_dir(config: pytest.Config) -> Path | None:
    workerinput = getattr(config, "workerinput", None)
    return Path(workerinput[SCOPES_KEY]) if workerinput and SCOPES_KEY in workerinput else None


# ---- on each worker ---------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order whole scopes (what a worker gets as one unit), the longest expected first."""
    if _scopes_dir(config) is None:
        return
    default_timeout = float(config.getini("timeout") or 0)
    scope = {id(it): _group(it) or it.nodeid for it in items}
    first: dict[str, int] = {}
    weight: dict[str, tuple[int, float]] = {}
    for i, item in enumerate(items):
        s = scope[id(item)]
        first.setdefault(s, i)
        if s in FIRST:
            w = (0, float(FIRST.index(s)))
        elif item.get_closest_marker("slow"):
            w = (1, -_timeout(item, default_timeout))
        elif s != item.nodeid:  # a group
            w = (2, 0.0)
        else:
            w = (3, 0.0)
        weight[s] = min(weight.get(s, w), w)
    items.sort(key=lambda it: (weight[scope[id(it)]], first[scope[id(it)]]))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook tells the controller collection is done
def pytest_collection_finish(session: pytest.Session) -> None:
    """Hand the grouping to the controller, keyed by the node ids it receives."""
    folder = _scopes_dir(session.config)
    if folder is None:
        return
    worker = session.config.workerinput["workerid"]  # type: ignore[attr-defined]
    scopes = {it.nodeid: g for it in session.items if (g := _group(it)) is not None}
    tmp = folder / f".{worker}.json.tmp"
    tmp.write_text(json.dumps(scopes))
    tmp.replace(folder / f"{worker}.json")


# ---- on the controller ------------------------------------------------------------------------


def _loadgroup(config: pytest.Config) -> bool:
    return bool(config.getoption("dist", default="no") == "loadgroup")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    config = node.config
    if not _loadgroup(config):
        return
    if not hasattr(config, "_parkwatch_scopes_dir"):
        config._parkwatch_scopes_dir = tempfile.mkdtemp(prefix="parkwatch-xdist-")
    node.workerinput[SCOPES_KEY] = config._parkwatch_scopes_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_parkwatch_scopes_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if not _loadgroup(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, with the scopes the workers computed (see module doc)."""

        scopes: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.scopes is None:
                files = sorted(Path(config._parkwatch_scopes_dir).glob("*.json"))  # type: ignore[attr-defined]
                # Every worker collected the same tests (xdist checks that), so any file will do.
                self.scopes = json.loads(files[0].read_text()) if files else {}
            return self.scopes.get(nodeid, nodeid)

    return GroupScheduling(config, log)
