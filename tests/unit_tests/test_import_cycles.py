"""The package's modules import one another without cycles.

The graph is built from the source with `ast`, not from what happens to be imported at run
time: every `import` and `from … import` counts wherever it stands, inside functions too (a
cycle hidden by a deferred import is still a cycle of concerns). Imports under
`if TYPE_CHECKING:` are left out: they never run, and annotations may name any module. An
import of `a.b.c` counts as an edge to the most specific module it names (`a.b.c`, or `a.b`
when `c` is a name defined in it); the implicit import of the parent packages does not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import ymera_groq_plugin

PACKAGE = Path(ymera_groq_plugin.__file__).resolve().parent
ROOT = PACKAGE.name

KNOWN: frozenset[frozenset[str]] = frozenset()
"""Cycles still to remove: none (issue 15 moved the bucket arithmetic next to its records in
`storage/buckets.py` and made `KeyPool` receive its store). A cycle added later fails both tests
below; list it here only with an issue that removes it."""


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    """One cycle through the component, as `a → b → … → a`."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            break
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            break
        path.append(fresh[0])
        seen.add(fresh[0])

    def short(name: str) -> str:
        return name.removeprefix(f"{ROOT}.")

    members = ", ".join(sorted(short(m) for m in component))
    return " → ".join(short(p) for p in [*path, start]) + f" (modules in the cycle: {members})"


def test_the_graph_sees_deferred_imports_and_skips_type_checking_ones() -> None:
    graph = import_graph()
    # A module-level import, and one inside a function (engine imports monitor there).
    assert f"{ROOT}.errors" in graph[f"{ROOT}.engine"]
    assert f"{ROOT}.monitor" in graph[f"{ROOT}.engine"]
    # monitor names the engine only for type checking.
    assert f"{ROOT}.engine" not in graph[f"{ROOT}.monitor"]
    # `from . import x` and `from .pkg import module` reach the module itself.
    assert f"{ROOT}.cache.codec" in graph[f"{ROOT}.engine"] | graph[f"{ROOT}.cache"]
    # Detection itself works on a known cycle.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_no_import_cycle_beyond_the_known_one() -> None:
    graph = import_graph()
    new = [c for c in cycles(graph) if c not in KNOWN]
    assert not new, "import cycles:\n" + "\n".join(_describe(c, graph) for c in new)


def test_no_import_cycle_at_all() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(c, graph) for c in found)


def test_storage_imports_nothing_above_it_but_foundation_modules() -> None:
    # The stores are the bottom layer: the quota ledger, the key pool and the engine build on
    # them, never the reverse. Outside `storage`, they may reach only the foundation: modules
    # of plain values and small parts that import nothing else of the package (errors, types,
    # the clock, and the breaker that runs on that clock).
    graph = import_graph()
    storage = f"{ROOT}.storage"
    foundation = {f"{ROOT}.{m}" for m in ("errors", "types", "clock", "breaker")}
    inside = {m for m in graph if m == storage or m.startswith(storage + ".")}
    reached, todo = set(), list(inside)
    while todo:
        for target in graph[todo.pop()]:
            if target not in reached and target not in inside:
                reached.add(target)
                todo.append(target)
    assert f"{ROOT}.storage.buckets" in inside and f"{ROOT}.types" in reached
    assert reached <= foundation, f"storage reaches {sorted(reached - foundation)}"
    # The foundation itself stays at the bottom.
    for module in foundation:
        assert graph[module] <= foundation, (module, sorted(graph[module]))
