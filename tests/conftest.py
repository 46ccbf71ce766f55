"""Suite-wide settings: how tests share out between pytest-xdist workers.

`make test` runs the suite on several workers (``-n``, ``--dist loadgroup``): most end-to-end
tests spend their time waiting on real processes, so two cores run more than two of them at
once. A test is handed out on its own unless its module shares a module- or class-scoped fixture
(a devnet, a running node, a browser): then the whole module goes to one worker, so that the
fixture is built once, not once per worker.
"""

from __future__ import annotations

import pytest

SHARED_SCOPES = frozenset({"module", "class", "package"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests of a module that shares fixtures (see the module docstring)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        shared = any(d.scope in SHARED_SCOPES for defs in info.name2fixturedefs.values() for d in defs)
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
