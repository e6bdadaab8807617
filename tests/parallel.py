"""How the suite splits over pytest-xdist workers (``make test``: ``-n auto --dist loadgroup``).

Registered from tests/conftest.py via ``pytest_plugins``. It changes nothing in a plain serial
run: every rule below applies only when xdist distributes by group (``--dist loadgroup``), and
then only decides *where* and *in which order* tests run, never what they do.

- A module with a module-scoped fixture (a training run, a browser, a built data folder) runs
  whole on one worker, so that fixture is built once, as in a serial run.
- The full-sample trainings share one worker (group ``training``): two torch trainings never
  compete for the two cores, and the second one finds the backbone features of the shared
  cat/dog images in the feature cache the first one filled.
- The longest work goes first, so no worker is left alone with a long test at the end: slow
  tests before the rest, the slow ones by their timeout mark (the longest bound first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Test modules that must share one worker, beyond what module-scoped fixtures already group.
SHARED_WORKER = {
    "test_train_full.py": "training",
    "test_perception_full.py": "training",
}


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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns xdist_group marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("loadgroup", default=False):  # set on xdist workers with loadgroup
        return
    default_timeout = float(config.getini("timeout") or 0)
    scope_of: dict[int, str] = {}
    for item in items:
        module = Path(str(item.fspath)).name
        group = None
        if item.get_closest_marker("xdist_group") is None:
            if module in SHARED_WORKER:
                group = SHARED_WORKER[module]
            elif _module_scoped(item):
                group = module
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
        mark = item.get_closest_marker("xdist_group")
        if mark is not None:
            group = str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        scope_of[id(item)] = group or item.nodeid

    # Order whole scopes (what xdist hands out as one unit), longest expected first.
    first: dict[str, int] = {}
    weight: dict[str, tuple[int, float]] = {}
    for i, item in enumerate(items):
        scope = scope_of[id(item)]
        first.setdefault(scope, i)
        w = (0, -_timeout(item, default_timeout)) if item.get_closest_marker("slow") else (1, 0.0)
        weight[scope] = min(weight.get(scope, w), w)
    items.sort(key=lambda it: (weight[scope_of[id(it)]], first[scope_of[id(it)]]))
