"""The pytest plugin's declaration: installing the package is enough to load it, and its
fixtures' names clash with none of this suite's (tests/integration/test_pytest_plugin.py
runs a user's tests with it)."""

from __future__ import annotations

import ast
import importlib
import tomllib

from tests.conftest import ROOT


def test_the_package_declares_its_pytest_plugin_whose_fixtures_clash_with_none() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"asyncjobs": "asyncjobs._pytest"}
    plugin = importlib.import_module("asyncjobs._pytest")
    fixtures = {"asyncjobs_services", "asyncjobs_worker"}
    assert fixtures <= set(dir(plugin))
    tree = ast.parse((ROOT / "tests" / "integration" / "conftest.py").read_text())
    suites = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    suites |= {n.name for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)}
    assert {"servers", "redis_url", "database_url", "app"} <= suites
    assert not fixtures & suites
