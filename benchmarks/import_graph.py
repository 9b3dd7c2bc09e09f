"""Module import graph of the refusalstats package and its import circles (#23).

Reads every module under ``src/refusalstats`` (and the inference part, which maps into the
package as ``refusalstats.inference``) with :mod:`ast` and draws an arrow A -> B when A
imports B at module level: top-level ``import``/``from ... import`` statements, including
those inside top-level ``try``/``if`` blocks, but not those under ``if TYPE_CHECKING:``
and not the lazy imports inside functions. ``from pkg import name`` where ``name`` is a
submodule counts as an arrow to the submodule; importing a package's ``__init__`` is an
arrow to the package.

Run ``python benchmarks/import_graph.py`` to print the circles (strongly connected
components with more than one module) and, with ``--lazy``, the circles you get when the
imports inside functions count too. ``tests/test_import_graph.py`` asserts the module-level
graph has no circle other than the allowed ones.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"refusalstats": ROOT / "src" / "refusalstats",
                "refusalstats.inference": ROOT / "inference"}


def module_files() -> dict[str, Path]:
    """Map module names (``refusalstats.counts``, ``refusalstats.bayes``) to their files."""
    out: dict[str, Path] = {}
    for prefix, base in PACKAGE_DIRS.items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = list(rel.parts)
            if prefix == "refusalstats" and parts and parts[0] == "inference":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt], lazy: bool):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if _is_type_checking(node.test):
                continue
            yield from _import_nodes(node.body, lazy)
            yield from _import_nodes(node.orelse, lazy)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *[h.body for h in node.handlers]):
                yield from _import_nodes(block, lazy)
        elif lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                        ast.With, ast.For, ast.While)):
            yield from _import_nodes(node.body, lazy)
            if isinstance(node, (ast.For, ast.While)):
                yield from _import_nodes(node.orelse, lazy)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Arrows module -> modules it imports within the package (module level unless ``lazy``)."""
    modules = module_files()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _import_nodes(tree.body, lazy):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if not t.startswith("refusalstats"):
                    continue
                r = _resolve(t, modules)
                if r is not None and r != mod:
                    graph[mod].add(r)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _parent_package_arrow(a: str, b: str) -> bool:
    """A package's ``__init__`` importing its own submodules, and those submodules importing
    a sibling through the package, is how a package is built, not a circle between rooms."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def room_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles after dropping the arrows between a package and its own submodules."""
    pruned = {a: {b for b in bs if not _parent_package_arrow(a, b)} for a, bs in graph.items()}
    return circles(pruned)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lazy", action="store_true",
                    help="count imports inside functions too")
    args = ap.parse_args(argv)
    graph = import_graph(lazy=args.lazy)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} arrows "
          f"({'module level and lazy' if args.lazy else 'module level'})")
    found = room_circles(graph)
    for comp in found:
        print("circle:", " <-> ".join(comp))
    if not found:
        print("no circles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
