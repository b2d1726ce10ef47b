"""The suite's own rules, checked on its source: every test has a timeout, no test waits
by sleeping or matches log lines on their spelling, and unit tests stay server-free."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

TESTS = ROOT / "tests"
POLL_INTERVAL = 0.05
"""The longest fixed sleep a test may take: one look at the state it waits for."""


def _sources() -> dict[Path, ast.Module]:
    """Every Python file of the suite but this one (which spells what it looks for)."""
    here = Path(__file__).resolve()
    return {p: ast.parse(p.read_text()) for p in sorted(TESTS.rglob("*.py")) if p != here}


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def test_every_test_has_a_timeout_and_markers_are_strict(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.option.strict_markers
    disabled = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _called(node).endswith("mark.timeout")
        and any(isinstance(a, ast.Constant) and not a.value for a in node.args)
    ]
    assert disabled == []  # no test turns its timeout off


def test_no_test_sleeps_longer_than_a_poll_interval() -> None:
    """A test waits for the state it needs, with a deadline (tests/helpers.py), never for a
    fixed time; a sleep that is the scenario itself (a slow producer) says so."""
    sleeps = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _called(node) in ("asyncio.sleep", "time.sleep")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, int | float)
        and node.args[0].value > POLL_INTERVAL
        and "# the scenario, not a wait" not in path.read_text().splitlines()[node.lineno - 1]
    ]
    assert sleeps == []


def test_no_test_matches_a_log_line_on_its_spelling() -> None:
    """Log lines are parsed as JSON (``tests.helpers.log_events``), not searched for text
    such as ``'"event": "job.dead"'`` that depends on the separators."""
    spelled = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(('"event"', '"job.', '"worker.', '"reconciler.'))
    ]
    assert spelled == []


def test_unit_tests_import_no_server_fixture_module() -> None:
    imports = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _sources().items()
        if path.parent.name == "unit"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.integration")
    ]
    assert imports == []
