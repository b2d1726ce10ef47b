"""Fixtures: real Redis and PostgreSQL, started by the suite itself.

By default the suite starts throwaway servers (the embedded default) and
never touches any other. To run it against servers of your own, set
ASYNCJOBS_TEST_REDIS_URL and ASYNCJOBS_TEST_DATABASE_URL: the suite will then
FLUSH databases on that Redis and CREATE/DROP databases on that PostgreSQL.

The servers start once per session, when the first test that needs one asks for
it (``servers`` is session-scoped and nothing uses it automatically).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs.testing import EmbeddedPgBouncer, EmbeddedServices, find_pgbouncer
from tests.conftest import ROOT

_redis_db = itertools.count(1)


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, str]]:
    """Base URLs of a Redis and a PostgreSQL server this suite may wipe."""
    redis_url = os.environ.get("ASYNCJOBS_TEST_REDIS_URL")
    database_url = os.environ.get("ASYNCJOBS_TEST_DATABASE_URL")
    if redis_url and database_url:
        yield {"redis": redis_url, "postgres": database_url}
        return
    with EmbeddedServices() as services:
        assert services.redis is not None
        assert services.postgres is not None
        yield {"redis": services.redis.url, "postgres": services.postgres.url}


@pytest.fixture(scope="session")
def pgbouncer(servers: dict[str, str]) -> Iterator[EmbeddedPgBouncer]:
    """A throwaway PgBouncer in transaction mode in front of the suite's PostgreSQL.

    Skipped, saying why, when there is no pgbouncer binary, except in CI (``CI=true``),
    where that is a failure: ``.ci/run`` installs it.
    """
    if find_pgbouncer() is None:
        reason = "no pgbouncer binary (apt-get install pgbouncer; .ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with EmbeddedPgBouncer(servers["postgres"], pool_mode="transaction") as bouncer:
        yield bouncer


@pytest.fixture
async def redis_url(servers: dict[str, str]) -> AsyncIterator[str]:
    """A Redis database of its own for this test, empty at the start."""
    base = servers["redis"].rsplit("/", 1)[0]
    url = f"{base}/{next(_redis_db) % 63 + 1}"
    client = aioredis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on this test's database, for looking at what was written."""
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def database_url(servers: dict[str, str]) -> AsyncIterator[str]:
    """A PostgreSQL database of its own for this test, dropped afterwards."""
    admin_url = servers["postgres"]
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield admin_url.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def settings(redis_url: str, database_url: str) -> asyncjobs.Settings:
    return asyncjobs.Settings(redis_url=redis_url, database_url=database_url, log_format="json")


@pytest.fixture
async def app(settings: asyncjobs.Settings) -> AsyncIterator[asyncjobs.App]:
    async with asyncjobs.App(settings) as app:
        yield app


@pytest.fixture
def worker_env(redis_url: str, database_url: str) -> dict[str, str]:
    """Environment for a worker subprocess that registers tests/workerjobs.py."""
    return {
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_DATABASE_URL": database_url,
        "ASYNCJOBS_IMPORTS": "tests.workerjobs",
        "ASYNCJOBS_POLL_DELAY": "0.02",
        "PYTHONPATH": str(ROOT),
    }
