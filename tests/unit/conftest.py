"""Unit tests: no Redis, no PostgreSQL, no worker; the whole directory runs in seconds.

The server fixtures live in tests/integration/conftest.py; should one be reachable
from here, a unit test that uses it fails, naming it, and starting a server in
process fails too. What must fail before any I/O runs on an App whose URLs lead
:func:`nowhere`, a local port that counts who dials it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from asyncjobs import App, Settings
from asyncjobs._services import EmbeddedPostgres, EmbeddedRedis
from tests.helpers import Nowhere

SERVER_FIXTURES = frozenset(
    {"servers", "redis_url", "redis", "database_url", "settings", "app", "worker_env"}
    # asyncjobs' pytest plugin (asyncjobs/_pytest.py)
    | {"asyncjobs_services", "asyncjobs_worker"}
)


@pytest.fixture(autouse=True)
def _no_servers(request: pytest.FixtureRequest) -> None:
    used = SERVER_FIXTURES & set(request.fixturenames)
    assert not used, f"a unit test uses {sorted(used)}: it belongs in tests/integration"


@pytest.fixture(scope="package", autouse=True)
def _servers_refuse_to_start() -> Iterator[None]:
    """While the unit tests run, starting a Redis or PostgreSQL server in process fails."""

    def refuse(server: object) -> None:
        raise AssertionError(f"a unit test started {type(server).__name__}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmbeddedRedis, "start", refuse)
        patch.setattr(EmbeddedPostgres, "start", refuse)
        yield


@pytest.fixture
async def nowhere() -> AsyncIterator[Nowhere]:
    """A port that counts the connections made to it; assert ``nowhere.dialled == 0``."""
    place = Nowhere()
    await place.start()
    yield place
    await place.stop()


@pytest.fixture
async def offline_app(nowhere: Nowhere) -> AsyncIterator[App]:
    """An App whose Redis is :func:`nowhere` and which has no PostgreSQL: a call that
    would write anything dials ``nowhere`` (and fails: nothing answers there)."""
    async with App(Settings(redis_url=nowhere.redis_url, redis_timeout=0.5)) as app:
        yield app
