"""A new user's first hour, the parts no server is needed for: a command or a worker
that cannot start says why in one line (the installed commands, from the user's project)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from asyncjobs.testing import free_port
from tests.userproject import ARQ, run, user_env


def test_a_failing_command_prints_one_line_and_a_traceback_only_at_debug(project: Path) -> None:
    env = {"ASYNCJOBS_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/db"}
    failed = run(project, "dead", "list", **env, ASYNCJOBS_DATABASE_TIMEOUT="1")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        line for line in failed.stderr.strip().splitlines() if line.startswith("Error: ")
    ]
    assert len(failed.stderr.strip().splitlines()) == 1
    assert "is unreachable" in failed.stderr
    debug = run(project, "dead", "list", **env, ASYNCJOBS_LOG_LEVEL="debug")
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("dead", "list", "--limit", "-1"),
        ("dead", "list", "--limit", "0"),
        ("dead", "list", "--limit", "abc"),
        ("flags", "history", "--limit", "-1"),
        ("dead", "purge", "--older-than", "-3d"),
        ("dev", "--port-redis", "0"),
        ("dev", "--port-postgres", "70000"),
    ],
)
def test_bad_numbers_and_durations_are_one_line_naming_the_option(
    project: Path, args: tuple[str, ...]
) -> None:
    result = run(project, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert args[-2] in lines[0]  # the option's name


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ASYNCJOBS_MAX_JOBS", "abc"), ("ASYNCJOBS_IMPORTS", "no_such_module")],
)
def test_a_misconfigured_worker_says_so_in_one_line(
    project: Path, variable: str, value: str
) -> None:
    # Nothing listens at this Redis URL: had the worker dialled it before reading its
    # settings, it would say so instead.
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [ARQ, "asyncjobs.WorkerSettings"],
        cwd=project,
        env=user_env(
            ASYNCJOBS_REDIS_URL=redis_url, ASYNCJOBS_LOG_FORMAT="json", **{variable: value}
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert json.loads(line)["event"] == "worker.misconfigured"
    assert variable in json.loads(line)["error"]
