"""The packages of controller/ are layers: each imports only from the layers below it, the pure
layers (core, compiler) never import the kubernetes client, bcc or pyroute2, and no module takes
part in an import circle (lazy imports inside functions count: they are circles all the same).

    core -> compiler -> datapath -> agent -> cni -> lab -> debug -> bench -> cli

Reads the source with ast, imports nothing of it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

CONTROLLER = Path(__file__).resolve().parents[2] / "controller"

LAYERS = ("core", "compiler", "datapath", "agent", "cni", "lab", "debug", "bench", "cli")
PURE = ("core", "compiler")
FORBIDDEN_IN_PURE = ("kubernetes", "bcc", "pyroute2")


def module_name(path: Path, root: Path = CONTROLLER) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str) -> Iterator[str]:
    """Every absolute module name an import statement names (module-level or lazy), with the
    `from pkg import submodule` form yielding pkg.submodule too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph(root: Path = CONTROLLER) -> dict[str, set[str]]:
    """module -> the other controller modules it imports (a package's own __init__ excluded)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        named = set(imports_of(path.read_text()))
        graph[mod] = {m for m in named if m in files and m != mod and not mod.startswith(m + ".")}
    return graph


def external_imports(root: Path = CONTROLLER) -> dict[str, set[str]]:
    return {
        module_name(p, root): {m.split(".")[0] for m in imports_of(p.read_text())} for p in root.rglob("*.py")
    }


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                    found.append(sorted(component))
    return found


def test_every_controller_module_belongs_to_a_layer() -> None:
    loose = [m for m in import_graph() if layer_of(m) is None and m != "controller"]
    assert loose == []


def test_each_layer_imports_only_from_itself_and_the_layers_below_it() -> None:
    upward = []
    for mod, targets in import_graph().items():
        here = layer_of(mod)
        if here is None:
            continue
        for target in targets:
            there = layer_of(target)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                upward.append(f"{mod} -> {target}")
    assert sorted(upward) == []


def test_the_pure_layers_import_no_kubernetes_client_bcc_or_pyroute2() -> None:
    bad = [
        f"{mod} imports {name}"
        for mod, names in external_imports().items()
        if layer_of(mod) in PURE
        for name in names
        if name in FORBIDDEN_IN_PURE
    ]
    assert bad == []


def test_no_module_takes_part_in_an_import_circle() -> None:
    assert circles(import_graph()) == []


def test_the_checks_see_a_circle_an_upward_import_and_a_forbidden_library(tmp_path: Path) -> None:
    # The checks themselves, on a throwaway tree: a lazy import closing a circle, core importing
    # datapath, compiler importing pyroute2.
    pkg = tmp_path / "controller"
    for layer in ("core", "compiler", "datapath"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from controller.datapath import b\n")
    (pkg / "datapath" / "b.py").write_text("from controller.core import a\n")
    (pkg / "compiler" / "c.py").write_text("import pyroute2\n")
    graph = import_graph(pkg)
    assert circles(graph) == [["controller.core.a", "controller.datapath.b"]]
    assert "controller.datapath.b" in graph["controller.core.a"]
    assert "pyroute2" in external_imports(pkg)["controller.compiler.c"]
