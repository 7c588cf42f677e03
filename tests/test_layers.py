"""Layers point one way (the developers' guide): walk every module's imports with ``ast``.

* No import circle among the package's modules, counting in-function imports too (hiding
  one side of a circle inside a function is still a circle: the guide keeps in-function
  imports for optional packages and the CLI's lazy loading).
* A module outside ``customgpt.cli`` never imports ``customgpt.cli`` (at any level).
* ``customgpt.data`` never imports ``customgpt.train`` (at any level).
"""

from __future__ import annotations

import ast
from pathlib import Path

import customgpt

PACKAGE = Path(customgpt.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported customgpt module, at module level?) for each import in ``path``.

    ``from customgpt.x import y`` counts as importing ``customgpt.x.y`` when that is a module,
    else ``customgpt.x``. Imports under ``if TYPE_CHECKING:`` are ignored (they never run).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, top)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names if alias.name.split(".")[0] == "customgpt")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] == "customgpt":
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in modules else target, top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    for stmt in tree.body:
        visit(stmt, True)
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module
    that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def _edges(graph: dict[str, list[tuple[str, bool]]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, imports in graph.items():
        targets = {target for target, _ in imports if target in graph}
        # A package's __init__ running its own submodules is how packages work, not a circle;
        # a submodule importing its package's __init__ (which imports it back) is one.
        edges[name] = {t for t in targets if not (_in(t, name) and t != name)}
    return edges


def test_the_walker_sees_imports():
    graph = _graph()
    assert "customgpt.cli" in graph and "customgpt.checkpoints" in graph
    assert ("customgpt.config", True) in graph["customgpt.model"]
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]  # the cycle detector can fail


def test_no_import_circles():
    cycles = _cycles(_edges(_graph()))
    assert not cycles, "modules importing each other in a circle: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_library_modules_never_import_the_cli():
    bad = sorted({
        f"{name} imports {target}"
        for name, imports in _graph().items()
        if not _in(name, "customgpt.cli") and name != "customgpt.__main__"
        for target, _ in imports
        if _in(target, "customgpt.cli")
    })
    assert not bad, "library modules importing the CLI: " + "; ".join(bad)


def test_data_never_imports_train():
    bad = sorted({
        f"{name} imports {target}"
        for name, imports in _graph().items()
        if _in(name, "customgpt.data")
        for target, _ in imports
        if _in(target, "customgpt.train")
    })
    assert not bad, "data modules importing training code: " + "; ".join(bad)
