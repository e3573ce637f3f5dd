"""The import graph of lib/mlfolio, read from the source with ast (lazy imports included).

    python tools/import_graph.py            # summary: modules, edges, cycles
    python tools/import_graph.py --edges    # every edge, with file:line
    python tools/import_graph.py --up       # edges that go up the floor plan (pyproject.toml)

An edge A -> B means a statement anywhere in A (module level, inside a function, or under
TYPE_CHECKING) imports B. `from pkg import name` points at `pkg.name` when that is a
module, else at `pkg`. A submodule importing from one of its own parent packages is left
out: the package's __init__ re-exports names its submodules define, and that is no cycle of
the design. Exit code 1 when a cycle remains.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "lib"
PYPROJECT = ROOT.parent / "pyproject.toml"
PACKAGE = "mlfolio"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function (or class) body, not at module level


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str, known: dict[str, Path]) -> bool:
    return known[name].name == "__init__.py"


def _lazy_lines(tree: ast.Module) -> set[int]:
    """Line numbers of import statements inside a function or class body."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def _targets(node: ast.AST, name: str, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = name.split(".")
        if not _is_package(name, known):
            base = base[:-1]
        base = base[: len(base) - node.level + 1]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{stem}.{alias.name}"
        out.append(sub if sub in known else stem)
    return out


def edges(root: Path = ROOT) -> list[Edge]:
    known = modules(root)
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy = _lazy_lines(tree)
        for node in ast.walk(tree):
            for target in _targets(node, name, known):
                # `import mlfolio.a.b` names a module; keep the longest known prefix.
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if not target or target == name:
                    continue
                if name.startswith(target + "."):  # from its own parent package
                    continue
                found.append(Edge(name, target, node.lineno, node.lineno in lazy))
    return list(dict.fromkeys(found))


def cycles(graph_edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in graph_edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components, key=len, reverse=True)


def floors(pyproject: Path = PYPROJECT) -> dict[str, int]:
    """Each top-level module's floor in the import-linter layers contract (0: the lowest)."""
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    found = {}
    for height, layer in enumerate(reversed(contract["layers"])):
        for name in layer.replace(":", "|").split("|"):
            found[f"{PACKAGE}.{name.strip().strip('()')}"] = height
    return found


def floor_of(module: str, plan: dict[str, int]) -> int | None:
    top = ".".join(module.split(".")[:2])
    return plan.get(top)


def upward(graph_edges: list[Edge], plan: dict[str, int]) -> list[Edge]:
    """The edges from a lower floor to a higher one (a module missing from the plan: none)."""
    out = []
    for edge in graph_edges:
        low, high = floor_of(edge.source, plan), floor_of(edge.target, plan)
        if low is not None and high is not None and low < high:
            out.append(edge)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every edge")
    parser.add_argument("--up", action="store_true", help="print the edges going up")
    parser.add_argument("--root", type=Path, default=ROOT, help="the folder holding mlfolio/")
    args = parser.parse_args(argv)
    found = edges(args.root)
    known = modules(args.root)
    if args.edges:
        for edge in sorted(found, key=lambda e: (e.source, e.target, e.line)):
            kind = "lazy" if edge.lazy else "top"
            print(f"{edge.source} -> {edge.target}  ({known[edge.source].name}:{edge.line} {kind})")
    pairs = {(e.source, e.target) for e in found}
    lazy_pairs = {(e.source, e.target) for e in found if e.lazy} - {
        (e.source, e.target) for e in found if not e.lazy
    }
    components = cycles(found)
    up = upward(found, floors())
    if args.up:
        for edge in sorted(up, key=lambda e: (e.source, e.target, e.line)):
            print(f"up: {edge.source} -> {edge.target}  ({known[edge.source].name}:{edge.line})")
    print(
        f"{len(known)} modules, {len(pairs)} edges ({len(lazy_pairs)} only lazy), "
        f"{sum(len(c) for c in components)} modules in {len(components)} cycle(s), "
        f"{len({(e.source, e.target) for e in up})} edges going up the floor plan"
    )
    for component in components:
        inside = sorted((a, b) for a, b in pairs if a in component and b in component)
        print(f"cycle of {len(component)}: {' '.join(component)}")
        for a, b in inside:
            print(f"  {a} -> {b}")
    return 1 if components else 0


if __name__ == "__main__":
    sys.exit(main())
