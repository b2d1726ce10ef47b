"""The package's shape: private implementation modules, imports that run one way.

Every import inside the package counts, including those in functions and under
``TYPE_CHECKING``: a module that imports one that imports it back (directly or
around a longer loop) fails the test, naming the loop.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncjobs

PACKAGE = Path(asyncjobs.__file__).parent
PUBLIC_MODULES = {"flags", "metrics", "runner", "serializer", "testing", "web"}


def _modules() -> dict[str, Path]:
    found = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "__main__"}}
    found.update(
        {p.name: p / "__init__.py" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    )
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, wherever the import statement is."""
    in_subpackage = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            level = node.level - (1 if in_subpackage else 0)
            if level == 1 or (node.level == 0 and (node.module or "").startswith("asyncjobs")):
                module = node.module or ""
                if node.level == 0:
                    module = module.removeprefix("asyncjobs").removeprefix(".")
                head = module.split(".")[0]
                found |= {head} if head else {n for n in names if n in known}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("asyncjobs."):
                    found.add(alias.name.split(".")[1])
    return found & known


def _loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert len(graph) >= 25
    # The App module sits above the features it wires: they never reach it.
    assert "_app" in graph["flags"]
    assert "_core" in graph["_enqueue"]
    assert _loop(graph) is None, " -> ".join(_loop(graph) or [])


def test_the_loop_finder_finds_a_loop() -> None:
    assert _loop({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _loop({"a": {"b"}, "b": set()}) is None


def _import_alone(name: str) -> str | None:
    """None if ``asyncjobs.<name>`` imports in a fresh interpreter, else its error."""
    module = f"asyncjobs.{name}"
    done = subprocess.run(
        [sys.executable, "-c", f"import importlib; importlib.import_module({module!r})"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = sorted(_modules())
    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = dict(zip(names, pool.map(_import_alone, names), strict=True))
    assert {name: error for name, error in errors.items() if error} == {}
    assert len(errors) >= 25


def test_implementation_modules_are_private() -> None:
    # The package's pytest plugin (an entry point) has pytest rewrite the package's asserts,
    # which adds the modules "@py_builtins" and "@pytest_ar": not names anyone can import.
    public = {
        name
        for name in dir(asyncjobs)
        if name.isidentifier()
        and not name.startswith("_")
        and isinstance(getattr(asyncjobs, name), types.ModuleType)
    }
    assert public <= PUBLIC_MODULES
    on_disk = {name for name in _modules() if not name.startswith("_")}
    assert on_disk == PUBLIC_MODULES
    # No module shadows the function of the same name (``asyncjobs.enqueue`` ...).
    for name in asyncjobs.__all__:
        assert importlib.util.find_spec(f"asyncjobs.{name}") is None or name in PUBLIC_MODULES
