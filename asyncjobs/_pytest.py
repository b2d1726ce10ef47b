"""asyncjobs' pytest plugin: real servers and a real worker for the tests of your code.

Installing asyncjobs is enough: pytest loads this module through the ``pytest11``
entry point. It adds two fixtures and starts nothing until a test asks for one:

- ``asyncjobs_services`` (session): throwaway Redis and PostgreSQL
  (:class:`asyncjobs.testing.EmbeddedServices`), asyncjobs' schema migrated, their
  URLs exported as ``ASYNCJOBS_REDIS_URL`` and ``ASYNCJOBS_DATABASE_URL`` for the rest
  of the session (so ``asyncjobs.App()`` and the module-level ``enqueue()`` find them;
  the default App is forgotten when they are set and again when the session ends, and
  the earlier values are put back). The fixture's value is the
  :class:`~asyncjobs.testing.EmbeddedServices`: ``.environ`` holds the two variables.
- ``asyncjobs_worker`` (per test): ``arq asyncjobs.WorkerSettings`` as a subprocess on
  those servers, started in the rootdir and ready (``worker.started``) before the test
  runs, stopped (SIGTERM, as in a deploy) after it. It registers the modules named by
  the ini option ``asyncjobs_imports`` (``asyncjobs_imports = myapp.jobs`` under
  ``[tool.pytest.ini_options]``) or, without it, by ``ASYNCJOBS_IMPORTS``. The value is
  the :class:`~asyncjobs.testing.WorkerProcess`; ``.lines`` is its JSON log.

The session shares the servers: tests that need a clean state make their own
(``FLUSHDB``, their own tables), as the project's own suite does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ._app import App, reset_app
from ._settings import Settings
from .testing import EmbeddedServices, WorkerProcess

INI_IMPORTS = "asyncjobs_imports"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI_IMPORTS,
        "modules whose @job functions the asyncjobs_worker fixture's worker registers "
        "(ASYNCJOBS_IMPORTS), separated by spaces or commas",
        type="args",
    )


async def _migrate(environ: dict[str, str]) -> None:
    settings = Settings(
        redis_url=environ["ASYNCJOBS_REDIS_URL"], database_url=environ["ASYNCJOBS_DATABASE_URL"]
    )
    async with App(settings) as app:
        await app.migrate()


@pytest.fixture(scope="session")
def asyncjobs_services() -> Iterator[EmbeddedServices]:
    """Throwaway Redis and PostgreSQL for the session, migrated, their URLs exported."""
    with EmbeddedServices() as services, pytest.MonkeyPatch.context() as patch:
        environ = services.environ
        # A test's event loop may be running in this thread: migrate in one of its own.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _migrate(environ)).result()
        for name, value in environ.items():
            patch.setenv(name, value)
        reset_app()
        try:
            yield services
        finally:
            reset_app()


def _imports(config: pytest.Config) -> str:
    named = [part for arg in config.getini(INI_IMPORTS) for part in arg.split(",") if part]
    return ",".join(named) or os.environ.get("ASYNCJOBS_IMPORTS", "")


@pytest.fixture
def asyncjobs_worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    """A worker process on ``asyncjobs_services``, ready when the test starts."""
    pytestconfig = request.config
    imports = _imports(pytestconfig)
    if not imports:  # said before the servers take their time to start
        pytest.fail(
            "asyncjobs_worker needs the modules that define your jobs: set "
            f"`{INI_IMPORTS} = myapp.jobs` in your pytest configuration, or "
            "ASYNCJOBS_IMPORTS=myapp.jobs",
            pytrace=False,
        )
    asyncjobs_services: EmbeddedServices = request.getfixturevalue("asyncjobs_services")
    root = str(pytestconfig.rootpath)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**asyncjobs_services.environ, "ASYNCJOBS_IMPORTS": imports, "PYTHONPATH": path}
    with WorkerProcess(env, cwd=root) as worker:
        yield worker
