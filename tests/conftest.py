"""What unit and integration tests share: logging, the CLI in a subprocess, a user's project.

``tests/unit`` needs no server; ``tests/integration`` has the fixtures that start
throwaway Redis and PostgreSQL (see its conftest), once per session and only when a
test asks for one. Job modules (``tests.workerjobs`` ...) stay here, at the dotted
names worker subprocesses import through ``ASYNCJOBS_IMPORTS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncjobs
from tests.userproject import make_project

ROOT = Path(__file__).resolve().parent.parent

# Configured before any App does, without logger caching, so capture_logs() sees events.
asyncjobs.configure_logging("json", "info", force=True, cache=False)


def run_module(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` with no ASYNCJOBS_* variables but ``env``'s, and tests importable."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    return subprocess.run(
        [sys.executable, "-m", *args],
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
        input=stdin if stdin is not None else "",  # never a terminal: commands must not ask
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``asyncjobs`` command in a subprocess."""
    return run_module("asyncjobs", *args, env=env, stdin=stdin)


@pytest.fixture(autouse=True)
def _fresh_default_app() -> Iterator[None]:
    asyncjobs.reset_app()
    yield
    asyncjobs.reset_app()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project directory: ``myapp/jobs.py``, nothing else (see tests/userproject.py)."""
    return make_project(tmp_path)
