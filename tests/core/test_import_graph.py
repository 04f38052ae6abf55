"""The app's module graph: no import circles, and no imports inside functions to hide one.

An import inside a function is allowed only of the heavy packages the API must be able to start
without (the `local` extra: torch and friends) or that it loads only when a feature is used, listed
below with the reason. Imports under `if TYPE_CHECKING:` and `if __name__ == "__main__":` do not
run when the module is imported, so they make no edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

APP = ROOT / "app"

# Packages (first dotted part) or modules that may be imported inside a function.
LAZY_OK = {
    "torch": "the `local` extra; the cloud image has no torch",
    "transformers": "the `local` extra",
    "tokenizers": "the `local` extra",
    "peft": "the `local` extra",
    "boto3": "slow to import; only the S3 store and the SageMaker backend need it",
    "botocore": "comes with boto3",
    "app.training.tiny_model": "imports torch and transformers at module level",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in APP.rglob("*.py")}


def _skipped_block(node: ast.If) -> bool:
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def imports(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import that runs, with whether it sits inside a function."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and not in_function and _skipped_block(node):
            yield from ((n, f) for child in node.orelse for n, f in imports(ast.Module([child], []), in_function))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from imports(node, inner)


def targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement names (a `from X import y` names X.y when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if not MODULES[module].name == "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the app modules it imports (wherever the import is), and the function-level imports
    that are not allowed."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy: set[str] = set()
    for module, path in MODULES.items():
        for node, in_function in imports(ast.parse(path.read_text(), str(path))):
            for target in targets(module, node):
                if in_function and target.split(".")[0] not in LAZY_OK and target not in LAZY_OK:
                    lazy.add(f"{path.relative_to(ROOT)}:{node.lineno} imports {target} inside a function")
                if target in MODULES and target != module:
                    edges[module].add(target)
    return edges, sorted(lazy)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    edges, _ = graph()
    assert not cycles(edges), cycles(edges)


def test_no_function_level_imports_but_the_heavy_optional_ones() -> None:
    _, lazy = graph()
    assert not lazy, "\n".join(lazy)


def test_the_checks_see_what_they_look_for() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import x\ndef f():\n    import torch, json\n"
                     "class C:\n    def m(self):\n        from app import db\n")
    assert [(n.lineno, f) for n, f in imports(tree)] == [(1, False), (5, True), (8, True)]
    assert targets("app.main", ast.parse("from app import catalog, __version__").body[0]) == ["app.catalog", "app"]  # type: ignore[arg-type]
    edges, _ = graph()
    assert "app.wiring" in edges["app.main"] and "app.training.reconcile" in edges["app.worker"]
