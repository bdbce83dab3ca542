"""The two packages' imports go one way: no cycle, and nothing below imports what is above.

The graph is read from the source with ``ast`` (nothing is imported): every
``import`` and ``from ... import`` of a module, at module level and inside
functions alike (an import moved into a function still closes a cycle, just
later), except a script's ``if __name__ == "__main__":`` block, which runs only
when the file is the program and never when it is imported. Layers, top first:

1. ``tfstatprune.cli``, the dispatch of the ``tfstatprune`` command;
2. ``tfstatprune.demo``, the main job (it exports with tflite_export);
3. ``tflite_export``, the exporter and its commands;
4. the tfstatprune library (everything else in ``tfstatprune``).

An import may stay within a layer or go down, never up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tfstatprune", "tflite_export")
LAYERS = (
    ("dispatch", lambda m: m == "tfstatprune.cli"),
    ("demo", lambda m: m == "tfstatprune.demo"),
    ("exporter", lambda m: m == "tflite_export" or m.startswith("tflite_export.")),
    ("library", lambda m: m == "tfstatprune" or m.startswith("tfstatprune.")),
)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two packages, by dotted name (a package by its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_main_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    names = [node.test.left, *node.test.comparators]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in names
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_block(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(node: ast.Import | ast.ImportFrom, name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that executing ``node`` (in module ``name``) imports."""
    targets = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            dotted = alias.name
            while dotted and dotted not in known:
                dotted = dotted.rpartition(".")[0]
            if dotted:
                targets.add(dotted)
        return targets
    base = node.module or ""
    if node.level:
        anchor = _package_of(name, path).split(".")
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            targets.add(f"{base}.{alias.name}")
        elif base in known:
            targets.add(base)
    return targets


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: the modules of the two packages it imports}``."""
    files = module_files(root)
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = set()
        for node in _imports(tree):
            graph[name] |= _resolve(node, name, path, known) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer(module: str) -> int:
    """The layer of ``module``: 0 is the top."""
    return next(i for i, (_, member) in enumerate(LAYERS) if member(module))


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The edges ``(importer, imported)`` that go to a higher layer."""
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if layer(target) < layer(source)
    )


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    package = tmp_path / "tfstatprune"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from tfstatprune import a\n")
    (package / "a.py").write_text("def f():\n    from tfstatprune.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text(
        "from . import c\nfrom .. import a\nif __name__ == '__main__':\n    import tfstatprune\n"
    )
    (package / "sub" / "c.py").write_text("import tfstatprune.sub.b as b\n")
    (tmp_path / "tflite_export").mkdir()
    graph = import_graph(tmp_path)
    assert graph == {
        "tfstatprune": {"tfstatprune.a"},
        "tfstatprune.a": {"tfstatprune.sub.b"},
        "tfstatprune.sub": set(),
        "tfstatprune.sub.b": {"tfstatprune.sub.c", "tfstatprune.a"},
        "tfstatprune.sub.c": {"tfstatprune.sub.b"},
    }
    assert find_cycle(graph) == ["tfstatprune.a", "tfstatprune.sub.b", "tfstatprune.a"]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_covers_both_packages(graph):
    assert {"tfstatprune", "tfstatprune.cli", "tflite_export", "tflite_export.cli"} <= set(graph)
    assert "tflite_export.cli" in graph["tfstatprune.cli"]
    assert "tfstatprune.commands" in graph["tflite_export.cli"]


def test_no_import_cycle(graph):
    assert find_cycle(graph) is None


def test_imports_go_down_the_layers(graph):
    assert upward_imports(graph) == []
