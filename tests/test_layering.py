"""The package layering of DESIGN.md: synth <- matcher <- training / plugin_host.

Every import of every module in the four packages is read from its source with
:mod:`ast` (function-level imports included, since they run too), resolved to a
module of the tree, and checked: nothing imports a higher layer, ``training``
and ``plugin_host`` do not import each other, and no modules import each other
in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"synth": 0, "matcher": 1, "training": 2, "plugin_host": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The tree's module that ``import name`` loads (longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The tree's modules that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from pkg import sub" may name a submodule: count it when it is one.
            names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read_from_the_whole_tree():
    # The parser found the layers and their known edges (a test that reads nothing
    # would pass everything below).
    assert {"synth.voice", "matcher.match", "training.trainer", "plugin_host.server"} <= set(MODULES)
    assert "synth.params" in GRAPH["matcher.model"]
    assert "matcher.metric" in GRAPH["training.metric_job"]
    assert len(MODULES) > 60


def test_nothing_imports_a_higher_layer_or_a_sibling_top_layer():
    bad = []
    for module, targets in GRAPH.items():
        for target in targets:
            a, b = _layer(module), _layer(target)
            if a == b:
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{module} -> {target}")
    assert not bad, "upward or sideways imports: " + ", ".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    # A package's __init__ importing its own submodules is how packages work, not
    # a circle: leave those edges out.
    graph = {m: {t for t in targets if not (MODULES[m].name == "__init__.py"
                                            and t.startswith(m + "."))}
             for m, targets in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_circle_check_finds_a_circle():
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["synth.params"].add("synth.voice")
    graph["synth.voice"].add("synth.params")
    assert any({"synth.params", "synth.voice"} <= set(c) for c in _cycles(graph))


@pytest.mark.parametrize("package", sorted(RANK))
def test_no_module_is_over_500_lines(package):
    long = {m: n for m, p in MODULES.items() if m.split(".")[0] == package
            for n in [len(p.read_text().splitlines())] if n > 500}
    assert not long, long
