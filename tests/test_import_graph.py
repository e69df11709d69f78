"""No import circles among hps_cli's modules: the module-level imports form a graph without
cycles, so no module relies on a function-level import to hide one (function-level imports stay
for what is slow to import: TensorFlow, h5py, the servers, a command's library)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.paths import REPO

# Import name -> source folder (runtime/ installs as hps_cli.runtime).
ROOTS = {"hps_cli": REPO / "hps_cli", "hps_cli.runtime": REPO / "runtime"}


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for prefix, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = (path, is_package)
    return found


def _top_level_imports(name: str, path: Path, is_package: bool, known) -> set[str]:
    """The hps_cli modules ``name`` imports when it is imported (function bodies and
    ``if TYPE_CHECKING:`` blocks left out)."""
    out: set[str] = set()

    def closest(target: str) -> str:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        return target

    def visit(node) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # imports for type checkers only: they never run
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                targets = [f"{module}.{alias.name}" for alias in child.names]
            else:
                visit(child)
                continue
            for target in targets:
                if not target.startswith("hps_cli"):
                    continue
                target = closest(target)
                out.add(target)
                # Importing a.b.c runs a and a.b first (those above the importer already run).
                parts = target.split(".")
                for i in range(1, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent in known and not name.startswith(parent + "."):
                        out.add(parent)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out.discard(name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    assert "hps_cli.dissect.sources" in modules and "hps_cli.runtime.errors" in modules
    graph = {
        name: _top_level_imports(name, path, is_package, modules)
        for name, (path, is_package) in modules.items()
    }
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
