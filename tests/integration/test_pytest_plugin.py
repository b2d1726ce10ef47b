"""The pytest plugin, as a user meets it: a project's own test file, run by pytest in a
subprocess (pytester), gets real servers and a real worker from the fixtures alone."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"

USER_JOBS = """
import asyncjobs


@asyncjobs.job(keep_result=60)  # so that job.result() can read it
async def plugin_double_job(ctx, n):
    return n * 2
"""

USER_TESTS = """
import os

import asyncjobs
from userjobs import plugin_double_job


def test_a_plain_test_starts_no_server():
    assert "ASYNCJOBS_REDIS_URL" not in os.environ


async def test_a_job_enqueued_here_runs_on_the_worker(asyncjobs_services, asyncjobs_worker):
    assert os.environ["ASYNCJOBS_DATABASE_URL"] == asyncjobs_services.environ[
        "ASYNCJOBS_DATABASE_URL"
    ]
    job = await asyncjobs.enqueue(plugin_double_job, 21)  # the default App, from the env
    assert await job.result(timeout=60, poll_delay=0.05) == 42
    await asyncjobs.get_app().close()
"""


def _plugin_args(pytestconfig: pytest.Config) -> list[str]:
    """Nothing when the package is installed (its entry point loads the plugin); else -p."""
    return [] if pytestconfig.pluginmanager.hasplugin("asyncjobs") else ["-p", "asyncjobs._pytest"]


@pytest.mark.slow
def test_a_user_s_tests_get_servers_and_a_worker_from_the_plugin_s_fixtures(
    pytester: pytest.Pytester, pytestconfig: pytest.Config
) -> None:
    pytester.makepyfile(userjobs=USER_JOBS, test_user=USER_TESTS)
    pytester.makeini(INI + "asyncjobs_imports = userjobs\n")
    # The first test runs before any fixture of the plugin is asked for: no server yet.
    result = pytester.runpytest_subprocess(*_plugin_args(pytestconfig), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_worker_fixture_without_job_modules_says_what_to_set(
    pytester: pytest.Pytester, pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASYNCJOBS_IMPORTS", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_user="def test_worker(asyncjobs_worker):\n    pass\n")
    result = pytester.runpytest_inprocess(*_plugin_args(pytestconfig), "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*asyncjobs_worker needs the modules that define your jobs*"])
