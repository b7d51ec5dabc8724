"""The layering holds: the core names no plugin, and no harness modules import each other in a cycle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from harness import registry

ROOT = Path(__file__).resolve().parent.parent
CORE = ["harness/plan.py", "harness/worker.py", "harness/evaluate.py", "harness/catalog.py",
        "harness/grid.py", "harness/results.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "analysis").glob("*.py"))]


def test_core_names_no_plugin() -> None:
    """plan, worker, evaluate, catalog, grid, results and analysis dispatch on capabilities and
    hooks. ("none" is left out: it is also the value of "no threat" in the result columns.)"""
    names = {n for kind in registry.KINDS for n in registry.names(kind)} - {"none"}
    assert {"pgd", "autoattack", "lorid", "multistep", "cifar10", "wrn-70-16"} <= names
    found = [f"{path}:{i}: {name}" for path in CORE
             for i, line in enumerate((ROOT / path).read_text().splitlines(), 1)
             for name in names if re.search(r"[\"']%s[\"']" % re.escape(name), line)]
    assert not found, "\n".join(found)


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted([*ROOT.glob("harness/**/*.py"), *ROOT.glob("analysis/*.py")]):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every harness module `name` imports, at module level or inside a function (a lazy import
    is still a dependency), as Python resolves relative names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is no cycle
                out.add(t)
    return out


def test_no_import_cycle() -> None:
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert "harness.catalog" in graph["harness.grid"]  # the resolver sees real edges
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
