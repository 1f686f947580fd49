"""The package is one house in floors, and imports run one way (``docs/design.md``, "Layers").

base → core library → envs → data → app: a module may import its own floor and the floors below,
never one above. Every ``import`` counts — at module top, inside functions and under
``if __name__ == "__main__"`` — because an import placed in a function to dodge a cycle is still a
cycle for the reader. The graph is also free of cycles within a floor. Implicit edges to parent
packages (importing ``deflow_trl.envs.ogbench`` runs ``deflow_trl/envs/__init__.py``) are not counted:
the package ``__init__`` files import their submodules lazily, on first attribute access.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "deflow_trl"
FLOORS = ("base", "core", "envs", "data", "app")
# Lowest floor: imports nothing of the package but other base modules.
BASE = {"errors", "extras", "console", "paths", "filelock", "hardware", "compile_compat", "threads", "lazy"}
# Entry points kept at their old paths (``python -m deflow_trl.train``, the Hydra callback): they are the app.
FORWARDERS = {"train", "summarize", "sweep_report"}


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def floor_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in ("envs", "data", "app"):
        return parts[1]
    if len(parts) == 2 and (parts[1] in BASE):
        return "base"
    if len(parts) == 2 and parts[1] in FORWARDERS:
        return "app"
    return "core"  # deflow_trl itself, the flat library modules, deflow_trl.kernels.*


def internal_imports(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for target in targets:
                if target.startswith("deflow_trl"):
                    resolved = resolve(target)
                    if resolved and resolved != name:
                        found.append((resolved, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(root: pathlib.Path = ROOT) -> dict[str, list[tuple[str, int, bool]]]:
    mods = modules(root)
    known = set(mods)
    return {name: internal_imports(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph[v]:
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_every_module_has_a_floor_and_the_floors_exist():
    floors = {floor_of(m) for m in modules()}
    assert floors == set(FLOORS)
    assert all((ROOT / f"{m}.py").is_file() for m in BASE | FORWARDERS)


def test_no_module_imports_a_floor_above_its_own():
    upward = [
        f"{name} ({floor_of(name)}) imports {target} ({floor_of(target)}) at line {line}"
        for name, edges in import_graph().items()
        for target, line, _ in edges
        if FLOORS.index(floor_of(target)) > FLOORS.index(floor_of(name))
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle_function_level_imports_included():
    assert cycles(import_graph()) == []


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path):
    """The two checks above can fail: a fake package with a core→app import and a two-module cycle."""
    pkg = tmp_path / "deflow_trl"
    (pkg / "app").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app" / "__init__.py").write_text("")
    (pkg / "app" / "train.py").write_text("")
    (pkg / "loss.py").write_text("def f():\n    from deflow_trl.app import train\n")
    (pkg / "actor.py").write_text("import deflow_trl.sampler\n")
    (pkg / "sampler.py").write_text("def g():\n    from deflow_trl import actor\n")
    graph = import_graph(pkg)
    assert ("deflow_trl.app.train", 2, True) in graph["deflow_trl.loss"]
    assert FLOORS.index(floor_of("deflow_trl.app.train")) > FLOORS.index(floor_of("deflow_trl.loss"))
    assert cycles(graph) == [["deflow_trl.actor", "deflow_trl.sampler"]]


def test_every_import_inside_a_function_says_why_it_is_lazy():
    """An import of the package inside a function is allowed only as a deliberate lazy import (an optional
    package such as Triton, or an app that needs the extra checked first), and says so on its line."""
    unexplained = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for _, line, in_function in internal_imports(name, path, set(modules())):
            if in_function and "lazy" not in lines[line - 1] and "lazy" not in lines[line - 2]:
                unexplained.append(f"{path.relative_to(ROOT.parent)}:{line}: {lines[line - 1].strip()}")
    assert unexplained == []
