"""Servers frozen, killed and restarted empty while a worker drains a bounded load:
nothing is lost, each side effect happens once, and the worker carries on."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from asyncjobs import App, Settings
from asyncjobs._services import EmbeddedPostgres, EmbeddedRedis
from asyncjobs.testing import WorkerProcess
from tests.chaosjobs import chaos_effect
from tests.conftest import ROOT
from tests.helpers import eventually, wait_for_event
from tests.integration.chaos.conftest import frozen_postgres

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ROWS = 300


async def _done_at_least(conn: asyncpg.Connection, count: int) -> bool:
    return int(await conn.fetchval("SELECT count(*) FROM items WHERE done")) >= count


async def _running_at_least(server: EmbeddedRedis, count: int) -> bool:
    """Whether ``count`` jobs are in progress (held by a worker) on ``server``."""
    client = aioredis.from_url(server.url)
    try:
        return len(await client.keys("arq:in-progress:*")) >= count
    finally:
        await client.aclose()


async def test_freeze_postgres_and_wipe_redis_mid_drain_nothing_lost_nothing_twice(
    own_postgres: EmbeddedPostgres, own_redis: EmbeddedRedis, worker_env: dict[str, str]
) -> None:
    settings = Settings(redis_url=own_redis.url, database_url=own_postgres.url)
    conn = await asyncpg.connect(own_postgres.url)
    try:
        await conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, done bool NOT NULL DEFAULT false, "
            "effects int NOT NULL DEFAULT 0)"
        )
        await conn.executemany("INSERT INTO items (id) VALUES ($1)", [(i,) for i in range(ROWS)])
        env = {
            **worker_env,
            "ASYNCJOBS_REDIS_URL": own_redis.url,
            "ASYNCJOBS_DATABASE_URL": own_postgres.url,
            "ASYNCJOBS_IMPORTS": "tests.chaosjobs",
            "ASYNCJOBS_MAX_JOBS": "20",
        }
        async with App(settings) as app:
            await app.migrate()
            with WorkerProcess(env, cwd=ROOT) as worker:
                await app.enqueue_many(chaos_effect, range(ROWS))
                await eventually(lambda: _done_at_least(conn, ROWS // 4), within=60)
                with frozen_postgres(own_postgres):
                    # Frozen until the worker is stalled on it: every slot holds a job that
                    # waits for PostgreSQL.
                    await eventually(
                        lambda: _running_at_least(own_redis, 20), what="the worker stalled"
                    )
                await eventually(lambda: _done_at_least(conn, ROWS // 2), within=60)
                own_redis.stop()  # every queued job is gone with it
                await wait_for_event(worker, "redis.unavailable")  # the worker lost it
                own_redis.start()  # same port, empty
                await eventually(lambda: _done_at_least(conn, ROWS), within=60)
                assert worker.alive()
            effects = await conn.fetch("SELECT effects FROM items ORDER BY id")
    finally:
        await conn.close()
    assert [r["effects"] for r in effects] == [1] * ROWS
