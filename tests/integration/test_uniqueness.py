"""Unique jobs: unique_for / unique_until, checked and taken in the enqueue's own round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

import asyncjobs
from asyncjobs import App, Settings
from asyncjobs._uniqueness import UNIQUE_PREFIX
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.helpers import eventually, job_finished, wait_for_event
from tests.uniquejobs import (
    by_account,
    dies,
    fails_once,
    refresh_account,
    short_lived,
    sync_account,
)


async def test_a_hundred_concurrent_enqueues_of_one_unique_job_queue_exactly_one(
    app: App, redis: aioredis.Redis
) -> None:
    with capture_logs() as logs:
        jobs = await asyncio.gather(*(app.enqueue(sync_account, 7) for _ in range(100)))
    assert sum(j is not None for j in jobs) == 1
    assert await redis.zcard("arq:queue") == 1
    reasons = [e["reason"] for e in logs if e["event"] == "job.rejected"]
    assert reasons == ["unique"] * 99


async def test_other_arguments_are_other_jobs_and_unique_key_decides_what_is_the_same(
    app: App, redis: aioredis.Redis
) -> None:
    assert await app.enqueue(sync_account, 1) is not None
    assert await app.enqueue(sync_account, 2) is not None
    assert await app.enqueue(by_account, 5, note="a") is not None
    assert await app.enqueue(by_account, 5, note="b") is None  # same account: same job
    assert await redis.zcard("arq:queue") == 3


async def test_the_window_expires_by_itself(app: App, redis: aioredis.Redis) -> None:
    assert await app.enqueue(short_lived, 1) is not None
    assert await app.enqueue(short_lived, 1) is None
    # Nothing removes the lock but its window (0.3 s): once its key is gone, the job is
    # new again.
    await eventually(lambda: _no_keys(redis, f"{UNIQUE_PREFIX}*"), what="the window ended")
    assert await app.enqueue(short_lived, 1) is not None


async def test_bulk_enqueue_applies_uniqueness_per_job(app: App, redis: aioredis.Redis) -> None:
    stats = asyncjobs.BulkStats()
    batches = [
        batch async for batch in app.enqueue_stream(sync_account, [1, 2, 1, 3, 2], stats=stats)
    ]
    assert len(batches) == 1
    results = batches[0]
    assert [r is not None for r in results] == [True, True, False, True, False]
    assert (stats.written, stats.rejected) == (3, 2)
    assert await redis.zcard("arq:queue") == 3


async def _wait(redis: aioredis.Redis, key: str, count: int = 1, wait: float = 20) -> None:
    async def reached() -> bool:
        return int(await redis.llen(key)) >= count

    await eventually(reached, within=wait, what=f"{key} reached {count}")


async def _no_keys(redis: aioredis.Redis, pattern: str) -> bool:
    return not await redis.keys(pattern)


@pytest.fixture
async def migrated(settings: Settings) -> Any:
    async with App(settings) as app:
        await app.migrate()
        yield app


@pytest.mark.slow
async def test_until_success_refuses_while_running_and_allows_after_success(
    migrated: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.uniquejobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        assert await migrated.enqueue(sync_account, 1) is not None
        await _wait(redis, "started:sync_account")
        assert await migrated.enqueue(sync_account, 1) is None  # running: still locked
        await redis.set("go:sync_account", 1)
        await wait_for_event(worker, "job.succeeded")
        assert await migrated.enqueue(sync_account, 1) is not None


@pytest.mark.slow
async def test_until_start_allows_a_new_enqueue_as_soon_as_the_first_starts(
    migrated: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.uniquejobs"}
    # Queued before any worker runs (a running worker starts it within a millisecond).
    assert await migrated.enqueue(refresh_account, 1) is not None
    assert await migrated.enqueue(refresh_account, 1) is None  # queued: locked
    with WorkerProcess(env, cwd=ROOT):
        await _wait(redis, "started:refresh_account")
        assert await migrated.enqueue(refresh_account, 1) is not None  # started: free
        await redis.set("go:refresh_account", 1)
        await _wait(redis, "started:refresh_account", 2)


@pytest.mark.slow
async def test_a_failing_then_retried_job_keeps_the_lock_and_a_dead_one_frees_it(
    migrated: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.uniquejobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        first = await migrated.enqueue(fails_once, 1)
        assert first is not None
        await wait_for_event(worker, "job.retrying")
        assert await migrated.enqueue(fails_once, 1) is None  # waiting for its retry: locked
        await _wait(redis, "succeeded:fails_once")
        await job_finished(redis, first.job_id)
        assert await migrated.enqueue(fails_once, 1) is not None

        doomed = await migrated.enqueue(dies, 1)
        assert doomed is not None
        await wait_for_event(worker, "job.dead")
        await job_finished(redis, doomed.job_id)
        assert await migrated.enqueue(dies, 1) is not None  # dead: the lock went with it
