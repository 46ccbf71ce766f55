"""Imports go one way: every ``fedswarm`` module may import only its own layer or the layers
below it (the order is in docs/ARCHITECTURE.md and :data:`LAYERS`), and no two packages import
each other, even within a layer.

The checker reads source with :mod:`ast` (nothing is imported), so it sees every kind of import:
module-level and function-local ``import``/``from ... import``, relative ones, and
``importlib.import_module("fedswarm....")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedswarm"

# Lowest first. A unit is the first component under ``fedswarm``: a package, or a top-level
# module. ``commands*`` top-level modules are the CLI's and sit at the top.
LAYERS: list[set[str]] = [
    {"fedswarm"},  # the package's __init__ (version string)
    {"config", "identity", "crypto", "wallet_envelope", "logs", "tools", "examples"},  # examples: bundled specs (data)
    {"protocol"},
    {"p2p", "storage", "ledger", "learning"},
    {"market"},
    {"roles"},
    {"api", "web", "devnet"},
    {"bench", "demo", "testing", "cli", "commands*"},
]


def layer_of(unit: str) -> int | None:
    """The layer index of ``unit``; None when the unit is not placed (itself a failure)."""
    for i, units in enumerate(LAYERS):
        if unit in units or any(u.endswith("*") and unit.startswith(u[:-1]) for u in units):
            return i
    return None


@dataclass(frozen=True)
class Edge:
    """One import of ``target`` (a dotted module name) found in ``path`` at ``line``."""

    path: Path
    line: int
    source: str  # dotted name of the importing module
    target: str

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_modules(root: Path) -> set[str]:
    return {module_name(p, root) for p in root.rglob("*.py")}


def _imports(tree: ast.AST, source: str, is_package: bool, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, dotted target) for every import in ``tree``, relative ones resolved."""
    package = source if is_package else source.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from fedswarm import crypto` imports the module fedswarm.crypto
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def import_edges(root: Path) -> list[Edge]:
    """Every import from a module under ``root`` (the ``fedswarm`` package dir) of a ``fedswarm``
    module."""
    pkg = root.name
    known = _known_modules(root)
    edges: dict[Edge, None] = {}  # ordered set: `from x import a, b` is one edge
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in _imports(tree, source, path.name == "__init__.py", known):
            if target == pkg or target.startswith(pkg + "."):
                edges[Edge(path, line, source, target)] = None
    return sorted(edges, key=lambda e: (str(e.path), e.line, e.target))


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def check_tree(root: Path) -> list[str]:
    """Human-readable violations for the package at ``root``: unplaced units, upward imports,
    and cycles between units."""
    problems: list[str] = []
    edges = import_edges(root)
    units = {unit_of(module_name(p, root)) for p in root.rglob("*.py")}
    for unit in sorted(units):
        if layer_of(unit) is None:
            problems.append(f"unit {unit!r} has no layer: place it in LAYERS (tests/test_layers.py)")
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        src, dst = unit_of(e.source), unit_of(e.target)
        if src == dst:
            continue
        graph.setdefault(src, {}).setdefault(dst, e)
        ls, ld = layer_of(src), layer_of(dst)
        if ls is not None and ld is not None and ld > ls:
            problems.append(f"upward import: {e.where(root)} ({e.source}, layer {ls}) imports "
                            f"{e.target} (layer {ld})")
    for cycle in _cycles(graph):
        hops = " -> ".join(f"{a} ({graph[a][b].where(root)})" for a, b in zip(cycle, cycle[1:], strict=False))
        problems.append(f"import cycle between units: {hops} -> {cycle[-1]}")
    return problems


def _cycles(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """One cycle (as a closed unit path) per strongly connected component of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the unit graph is a few dozen nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(graph, comp) for comp in comps]


def _path_in(graph: dict[str, dict[str, Edge]], comp: set[str]) -> list[str]:
    """A closed walk start -> ... -> start inside the component ``comp`` (breadth-first)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w not in comp:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component has a cycle through its start")


# -- the checker itself ---------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "fedswarm"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


CLEAN = {
    "__init__.py": '__version__ = "0"\n',
    "config.py": "import json\n",
    "protocol/__init__.py": "",
    "protocol/job.py": "from fedswarm.config import json\nfrom . import helpers\n",
    "protocol/helpers.py": "",
    "roles/__init__.py": "",
    "roles/client.py": "from fedswarm import config\nfrom ..protocol import job\n",
    "api/__init__.py": "",
    "api/app.py": "def f():\n    from fedswarm.roles import client\n",
    "cli.py": "import importlib\nimportlib.import_module('fedswarm.api.app')\n",
}


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    root = _write(tmp_path, CLEAN)
    assert check_tree(root) == []
    targets = {(e.source, e.target) for e in import_edges(root)}
    # every kind of import was seen: absolute, relative (both levels), local, from-package, string
    assert ("fedswarm.protocol.job", "fedswarm.protocol.helpers") in targets
    assert ("fedswarm.roles.client", "fedswarm.protocol.job") in targets
    assert ("fedswarm.roles.client", "fedswarm.config") in targets
    assert ("fedswarm.api.app", "fedswarm.roles.client") in targets
    assert ("fedswarm.cli", "fedswarm.api.app") in targets


@pytest.mark.parametrize("where,text", [
    ("protocol/job.py", "from fedswarm.roles.client import x\n"),  # module level
    ("protocol/job.py", "def f():\n    import fedswarm.api.app\n"),  # function-local
    ("roles/client.py", "from ..api import app\n"),  # relative
    ("config.py", "import importlib\nm = importlib.import_module('fedswarm.protocol.job')\n"),
])
def test_checker_fails_on_an_upward_import(tmp_path: Path, where: str, text: str) -> None:
    files = dict(CLEAN)
    files[where] = files[where] + text
    problems = check_tree(_write(tmp_path, files))
    upward = [p for p in problems if p.startswith("upward import")]
    assert len(upward) == 1, problems
    line = len(CLEAN[where].splitlines()) + len(text.splitlines())  # the import is text's last line
    assert upward[0].startswith(f"upward import: fedswarm/{where}:{line} ")
    # the lower unit already imports the upper one in CLEAN where it can, so a cycle is reported
    # too; the other problems are only that cycle
    assert all(p.startswith("import cycle between units") for p in problems if p not in upward)


def test_checker_fails_on_a_cycle_within_a_layer(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files.update({"p2p/__init__.py": "from fedswarm.storage import base\n",
                  "storage/__init__.py": "", "storage/base.py": "def f():\n    from fedswarm import p2p\n"})
    problems = check_tree(_write(tmp_path, files))
    assert len(problems) == 1, problems
    assert problems[0].startswith("import cycle between units: p2p (fedswarm/p2p/__init__.py:1) -> storage")


def test_checker_fails_on_an_unplaced_unit(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["newthing.py"] = ""
    assert check_tree(_write(tmp_path, files)) == [
        "unit 'newthing' has no layer: place it in LAYERS (tests/test_layers.py)"]


# -- the real package -----------------------------------------------------------------------


def test_fedswarm_imports_only_downward() -> None:
    problems = check_tree(SRC)
    assert not problems, "\n".join(problems)
