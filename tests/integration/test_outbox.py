"""Transactional enqueue: ``_connection=`` writes to the outbox in the caller's transaction,
and a relay moves committed rows to Redis (real PostgreSQL, Redis and processes)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import App, InvalidOptionError, Settings
from asyncjobs._outbox import Relay
from asyncjobs.runner import Worker
from asyncjobs.testing import ServiceProcess, WorkerProcess
from tests.conftest import ROOT, cli
from tests.helpers import eventually, recorded_runs, wait_for_event
from tests.uniquejobs import sync_account
from tests.workerjobs import record_args

pytestmark = pytest.mark.slow

retired = asyncjobs.Registry()


@asyncjobs.job(registry=retired, name="retired_job")
async def retired_job(ctx: dict[str, Any], n: int) -> None:
    """A job the worker processes of these tests do not know (deleted since)."""


@pytest.fixture
async def db(app: App, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the migrated database."""
    await app.migrate()
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _outbox_rows(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM asyncjobs.outbox"))


async def test_a_rolled_back_transaction_enqueues_nothing(
    app: App, db: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    transaction = db.transaction()
    await transaction.start()
    job = await app.enqueue(record_args, 1, _connection=db)
    many = await app.enqueue_many(record_args, [(2,), (3,)], _connection=db)
    assert await _outbox_rows(db) == 3  # written, in this transaction only
    await transaction.rollback()
    assert job is not None
    assert all(j is not None for j in many)
    assert await _outbox_rows(db) == 0
    assert await Relay(app).drain() == 0
    assert await redis.keys("arq:job:*") == []
    assert await redis.zcard("arq:queue") == 0


async def test_committed_rows_reach_redis_with_their_ids_and_deferrals(
    app: App, db: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    before_ms = time.time() * 1000
    async with db.transaction():
        job = await app.enqueue(record_args, 1, _connection=db, _job_id="order-1")
        many = await app.enqueue_many(record_args, [(2,), (3,)], _connection=db, _defer_by=3600)
        assert await redis.zcard("arq:queue") == 0  # not before the commit
    after_ms = time.time() * 1000
    relay = Relay(app)
    assert await relay.drain() == 3
    assert relay.moved == 3
    assert await _outbox_rows(db) == 0
    assert job is not None
    assert job.job_id == "order-1"
    assert await redis.zscore("arq:queue", "order-1") is not None
    for handle in many:
        assert handle is not None
        score = await redis.zscore("arq:queue", handle.job_id)
        assert score is not None
        assert before_ms + 3_600_000 <= score <= after_ms + 3_600_000
    payload = json.loads(await redis.get("arq:job:order-1"))
    assert (payload["f"], payload["a"]) == ("record_args", [1])
    # The same id again: arq's rule holds through the outbox (one job, not two).
    async with db.transaction():
        await app.enqueue(record_args, 1, _connection=db, _job_id="order-1")
    assert await relay.drain() == 1
    assert await redis.zcard("arq:queue") == 3


async def test_uniqueness_is_decided_when_the_job_reaches_redis(
    app: App, db: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    async with db.transaction():  # both rows are written: Redis is not asked here
        first = await app.enqueue(sync_account, 42, _connection=db)
        second = await app.enqueue(sync_account, 42, _connection=db)
        assert await _outbox_rows(db) == 2
    assert first is not None
    assert second is not None
    assert await Relay(app).drain() == 2
    assert await _outbox_rows(db) == 0
    queued = [m.decode() for m in await redis.zrange("arq:queue", 0, -1)]
    assert queued == [first.job_id]


async def test_a_connection_outside_a_transaction_is_refused(
    app: App, db: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    with pytest.raises(InvalidOptionError, match="not in a transaction.*committed at once"):
        await app.enqueue(record_args, 1, _connection=db)
    with pytest.raises(InvalidOptionError, match="not in a transaction"):
        await app.enqueue_many(record_args, [(1,)], _connection=db)
    assert await _outbox_rows(db) == 0
    assert await redis.zcard("arq:queue") == 0


async def test_the_kill_switch_writes_nothing_to_the_outbox(
    app: App, db: asyncpg.Connection
) -> None:
    await app.flags.enable("disable_record_args")
    async with db.transaction():
        assert await app.enqueue(record_args, 1, _connection=db) is None
        assert await app.enqueue_many(record_args, [(2,), (3,)], _connection=db) == [None, None]
        assert await _outbox_rows(db) == 0


async def test_committed_jobs_run_in_a_worker_and_an_unknown_job_becomes_a_dead_letter(
    app: App,
    db: asyncpg.Connection,
    redis: aioredis.Redis,
    worker_env: dict[str, str],
    settings: Settings,
) -> None:
    with WorkerProcess(worker_env, cwd=ROOT) as worker:
        async with App(settings, registry=retired) as old_code, db.transaction():  # a deploy ago
            job = await app.enqueue(record_args, "paid", _connection=db)
            gone = await old_code.enqueue(retired_job, 7, _connection=db)
        runs = await recorded_runs(redis, 1)
        dead = await eventually(app.dead.list, what="a dead letter for the retired job")
        status = json.loads(cli("status", "--json", env=worker_env).stdout)
        await wait_for_event(worker, "job.dead", job_id=gone.job_id if gone else "")
    assert job is not None
    assert gone is not None
    assert [(r["job_id"], r["args"]) for r in runs] == [(job.job_id, ["paid", None])]
    assert [(d.job_name, d.job_id, d.reason) for d in dead] == [
        ("retired_job", gone.job_id, "unknown_job")
    ]
    assert dead[0].payload is not None
    assert await _outbox_rows(db) == 0
    assert status["outbox"] == {"pending": 0, "oldest_age_s": None}


async def test_a_relay_killed_between_the_redis_write_and_the_delete_queues_the_job_once(
    app: App, db: asyncpg.Connection, redis: aioredis.Redis, redis_url: str, database_url: str
) -> None:
    env = {
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_DATABASE_URL": database_url,
        "ASYNCJOBS_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
        "OUTBOX_TEST_PAUSE": "1",
    }
    relay_process = ServiceProcess(
        [sys.executable, "-m", "tests.outboxrelay"], env, ready="relay.started"
    )
    with relay_process:
        async with db.transaction():
            job = await app.enqueue(record_args, "once", _connection=db)
        assert job is not None
        await wait_for_event(relay_process, "relay.paused", job_ids=[job.job_id])
        assert await redis.exists(f"arq:job:{job.job_id}")
        assert await _outbox_rows(db) == 1  # its delete never happened
        status = json.loads(cli("status", "--json", env=env).stdout)
        assert status["outbox"]["pending"] == 1
        assert relay_process.process is not None
        relay_process.process.kill()
        relay_process.process.wait()
    # The job runs (and keeps its result) before another relay finds the row again.
    no_db = App(Settings(redis_url=redis_url, log_format="json"), kill_switch=False)
    async with no_db:
        await Worker(no_db, burst=True, handle_signals=False, poll_delay=0.01).run()
    assert [r["job_id"] for r in await recorded_runs(redis, 1)] == [job.job_id]
    second = Relay(app)
    # The killed relay's transaction rolls back once PostgreSQL sees its connection gone.
    await eventually(second.drain, what="the second relay took the row")
    assert second.moved == 1
    assert await _outbox_rows(db) == 0
    assert await redis.zcard("arq:queue") == 0  # not queued again
    assert not await redis.exists(f"arq:job:{job.job_id}")
    assert await redis.llen("runs") == 1


async def test_ten_thousand_enqueues_from_fifty_transactions_make_ten_thousand_jobs(
    app: App,
    db: asyncpg.Connection,
    redis: aioredis.Redis,
    database_url: str,
    settings: Settings,
) -> None:
    relaying = App(settings, outbox_relay=True)  # a web process, say, that relays too
    await relaying.__aenter__()
    assert relaying.outbox_relay is not None
    relays = [Relay(app), relaying.outbox_relay]
    relays[0].start()
    ids: list[str] = []

    async def one_transaction(pool: asyncpg.Pool, t: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for i in range(200):
                job = await app.enqueue(record_args, t, i, _connection=conn)
                assert job is not None
                ids.append(job.job_id)

    try:
        async with asyncpg.create_pool(database_url, min_size=50, max_size=50) as pool:
            await asyncio.gather(*(one_transaction(pool, t) for t in range(50)))
        await eventually(lambda: sum(r.moved for r in relays) >= 10_000, what="every row relayed")
    finally:
        await relays[0].stop()
        await relaying.close()
    assert len(set(ids)) == 10_000
    assert sum(r.moved for r in relays) == 10_000  # no row taken by both relays
    assert await _outbox_rows(db) == 0
    queued = {m.decode() for m in await redis.zrange("arq:queue", 0, -1)}
    assert queued == set(ids)
    payloads = [json.loads(p)["a"] for p in await redis.mget([f"arq:job:{i}" for i in ids])]
    assert sorted(map(tuple, payloads)) == [(t, i) for t in range(50) for i in range(200)]
