"""The import graph of the project: no module imports a higher layer, and no import cycle, counting every
import statement wherever it is (top level, inside functions, under `if __name__ == "__main__"`).

Layers, lowest first: conf (declarations) < models (recommenders, no pipeline) < tasks (stages) < flows
(Prefect wiring and the CLI). A function-level import that closes a cycle only hides it from Python's import
machinery; this test sees it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"conf": 0, "models": 1, "tasks": 2, "flows": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for layer in LAYERS for path in (ROOT / layer).rglob("*.py")}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports: `import a.b`, `from a.b import c` (c itself when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_higher_layer():
    upward = [f"{source} -> {target}" for source, targets in import_graph().items() for target in sorted(targets)
              if LAYERS[target.split(".")[0]] > LAYERS[source.split(".")[0]]]
    assert upward == []


def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_cycles_and_only_cycles(graph, expected):
    assert cycles(graph) == expected


def test_function_level_and_main_block_imports_are_counted(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tasks.io import write_json\n\nif __name__ == '__main__':\n"
                      "    import flows.cli\n")
    assert imported_modules(module, project_modules()) == {"tasks.io", "flows.cli"}
