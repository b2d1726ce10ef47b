"""Frozen servers (SIGSTOP) under enqueues and executions: bounded waits, honest errors.

Marked ``chaos``; part of the default run. Each test starts its own servers, bounds its
load and its time, and talks to loopback only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from asyncjobs import (
    App,
    EnqueueOutcomeUnknownError,
    ExecutionRequest,
    RedisUnavailableError,
    Settings,
)
from asyncjobs._services import EmbeddedPostgres, EmbeddedRedis
from asyncjobs.flags import execution_gate
from tests.helpers import bounded, eventually
from tests.integration.chaos.conftest import frozen_postgres, frozen_redis
from tests.workerjobs import count_run, record_args

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

FLAG_TIMEOUT = 0.3
MARGIN = 1.0  # generous for a busy machine; unbounded waits last as long as the freeze


async def test_a_frozen_postgres_bounds_enqueues_and_the_execution_gate(
    own_postgres: EmbeddedPostgres, redis_url: str
) -> None:
    settings = Settings(
        redis_url=redis_url,
        database_url=own_postgres.url,
        flag_ttl=0.2,
        flag_timeout=FLAG_TIMEOUT,
        log_format="json",
    )
    async with App(settings) as app:
        await app.migrate()
        await app.flags.enable("disable_count_run", actor="test")
        assert await app.enqueue(record_args, "warm") is not None  # the snapshot is loaded
        with frozen_postgres(own_postgres):
            await eventually(
                lambda: app.flags.cached("disable_count_run") is None, what="the snapshot is stale"
            )
            results: list[Any] = []
            deadline = time.monotonic() + 3  # a freeze of 3 s at least
            while time.monotonic() < deadline:
                async with bounded(FLAG_TIMEOUT + MARGIN, "an enqueue, bounded by the flags'"):
                    results.append(await app.enqueue(count_run, len(results)))
            for _ in range(3):
                app.flags._fresh_until = 0.0  # stale again: the gate must load (and not wait)
                request = ExecutionRequest(app, app.registry.get("record_args"), {}, (), {})
                async with bounded(FLAG_TIMEOUT + MARGIN, "the execution gate, bounded"):
                    await execution_gate(request, _ran)
    assert len(results) >= 2  # the freeze outlasted more than one flag timeout
    assert all(r is None for r in results)  # the last snapshot: disable_count_run is on


async def _ran(request: Any) -> str:
    return "ran"


async def _waits_on_a_lock(app: App) -> bool:
    """Whether a session of the App's database waits for a lock another one holds."""
    pool = await app.db()
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def test_a_flag_change_notified_during_a_load_is_never_undone(
    own_postgres: EmbeddedPostgres, redis_url: str
) -> None:
    settings = Settings(
        redis_url=redis_url, database_url=own_postgres.url, flag_ttl=60, flag_timeout=10
    )
    async with App(settings) as app, App(settings) as operator:
        await app.migrate()
        await app.flags.refresh()  # snapshot loaded, listening
        app.flags.count("disable_record_args", "rejected")
        await app.flags.list()  # the counter row exists
        app.flags.count("disable_record_args", "rejected")
        blocker = await asyncpg.connect(own_postgres.url)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT * FROM asyncjobs.flag_counters FOR UPDATE")
            app.flags._fresh_until = 0.0
            load = asyncio.create_task(app.flags.refresh())  # reads, then waits on the lock
            await eventually(
                lambda: _waits_on_a_lock(operator), what="the load waits on the row lock"
            )
            assert not load.done()
            await operator.flags.enable("disable_record_args", actor="ops", reason="stop")
            await eventually(
                lambda: "disable_record_args" in (app.flags._snapshot or ()),
                within=2,
                what="the notification reached this process's snapshot",
            )
            await transaction.commit()
            await asyncio.wait_for(load, 10)
        finally:
            await blocker.close()
        assert app.flags.cached("disable_record_args") is True  # the load did not undo it
        assert await app.enqueue(record_args, "stopped") is None


async def test_a_write_sent_to_a_frozen_redis_is_reported_as_maybe_enqueued(
    own_redis: EmbeddedRedis,
) -> None:
    settings = Settings(redis_url=own_redis.url, redis_timeout=0.5)
    async with App(settings, kill_switch=False) as app:
        assert await app.enqueue(record_args, "warm") is not None
        with frozen_redis(own_redis), pytest.raises(EnqueueOutcomeUnknownError) as info:
            async with bounded(0.5 + MARGIN, "the write failing within the Redis timeout"):
                await app.enqueue(record_args, "maybe", _job_id="maybe-1")
        assert info.value.job_ids == ("maybe-1",)
        assert "may or may not be enqueued" in str(info.value)
        redis = await app.redis()
        assert await redis.zscore("arq:queue", "maybe-1") is not None  # it was, after all
        assert await app.enqueue(record_args, "maybe", _job_id="maybe-1") is None  # duplicate
    own_redis.stop()
    async with App(settings, kill_switch=False) as app:  # nothing can be sent at all
        with pytest.raises(RedisUnavailableError, match="not enqueued") as down:
            await app.enqueue(record_args, "down")
        assert not isinstance(down.value, EnqueueOutcomeUnknownError)
