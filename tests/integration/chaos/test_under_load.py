"""Servers frozen, killed and restarted empty while a worker drains a bounded load:
nothing is lost, each side effect happens once, and the worker carries on."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from asyncjobs import App, Settings
from asyncjobs._services import EmbeddedPostgres, EmbeddedRedis
from asyncjobs.testing import WorkerProcess
from tests.chaos.conftest import frozen_postgres
from tests.chaosjobs import chaos_effect
from tests.conftest import ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ROWS = 300


async def _done(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM items WHERE done"))


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
                deadline = time.monotonic() + 60
                while await _done(conn) < ROWS // 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                with frozen_postgres(own_postgres):
                    await asyncio.sleep(2)
                while await _done(conn) < ROWS // 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                own_redis.stop()  # every queued job is gone with it
                await asyncio.sleep(1)
                own_redis.start()  # same port, empty
                while await _done(conn) < ROWS and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert worker.alive()
            effects = await conn.fetch("SELECT effects FROM items ORDER BY id")
    finally:
        await conn.close()
    assert [r["effects"] for r in effects] == [1] * ROWS
