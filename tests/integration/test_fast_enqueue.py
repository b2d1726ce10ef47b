"""One-round-trip enqueue (kept exactly compatible with arq), bulk enqueue and jitter."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, func

from asyncjobs import (
    App,
    Args,
    BulkStats,
    EnqueueError,
    EnqueueRequest,
    JobSerializationError,
    Settings,
)
from asyncjobs.serializer import deserialize, serialize
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.helpers import eventually
from tests.workerjobs import InvoiceJob, count_run, record_args


async def _keys(redis: aioredis.Redis, job_id: str, queue: str = "arq:queue") -> dict[str, Any]:
    raw = await redis.get(f"arq:job:{job_id}")
    payload = json.loads(raw)
    payload.pop("et")
    return {
        "type": (await redis.type(f"arq:job:{job_id}")).decode(),
        "ttl_ms": await redis.pttl(f"arq:job:{job_id}"),
        "payload": payload,
        "score_ms": await redis.zscore(queue, job_id),
    }


async def _assert_same_keys(redis: aioredis.Redis, ours: str, theirs: str, queue: str) -> None:
    """The same key type and payload; TTL and score equal but for the time between the calls."""
    a, b = await _keys(redis, ours, queue), await _keys(redis, theirs, queue)
    assert (a["type"], a["payload"]) == (b["type"], b["payload"])
    assert abs(a["ttl_ms"] - b["ttl_ms"]) < 2000
    assert abs(a["score_ms"] - b["score_ms"]) < 2000


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"_defer_by": 90},
        {"_defer_by": timedelta(minutes=5), "_expires": 600},
        {"_defer_until": datetime(2030, 1, 1, tzinfo=UTC)},
        {"_expires": 30, "_queue_name": "other"},
        {"_job_try": 3},
    ],
)
async def test_writes_the_same_keys_as_arqs_enqueue_job(
    app: App, redis_url: str, redis: aioredis.Redis, options: dict[str, Any]
) -> None:
    arq = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize)
    try:
        ours = await app.enqueue(record_args, 1, [2], note="n", _job_id="ours", **options)
        theirs = await arq.enqueue_job("record_args", 1, [2], note="n", _job_id="theirs", **options)
    finally:
        await arq.aclose()
    assert ours is not None
    assert theirs is not None
    queue = options.get("_queue_name", "arq:queue")
    await _assert_same_keys(redis, "ours", "theirs", queue)
    # and one key of asyncjobs' own beside arq's: the token that wakes an idle worker
    assert sorted(await redis.keys("*")) == sorted(
        [b"arq:job:ours", b"arq:job:theirs", queue.encode(), f"asyncjobs:wake:{queue}".encode()]
    )
    assert await redis.lrange(f"asyncjobs:wake:{queue}", 0, -1) == [b"1"]


async def test_duplicate_ids_are_refused_while_job_or_result_exists(
    app: App, redis: aioredis.Redis
) -> None:
    assert await app.enqueue(record_args, 1, _job_id="x") is not None
    assert await app.enqueue(record_args, 2, _job_id="x") is None
    await redis.delete("arq:job:x")
    await redis.set("arq:result:x", b"{}")
    assert await app.enqueue(record_args, 3, _job_id="x") is None
    await redis.delete("arq:result:x")
    assert await app.enqueue(record_args, 4, _job_id="x") is not None


async def test_the_script_is_reloaded_after_script_flush(app: App, redis: aioredis.Redis) -> None:
    assert await app.enqueue(record_args, 1) is not None
    await redis.script_flush()
    assert await app.enqueue(record_args, 2) is not None
    assert await redis.zcard("arq:queue") == 2


async def _run_arq_worker(
    redis_url: str, ran: list[Any], ran_at: dict[Any, float] | None = None
) -> Worker:
    async def plain(ctx: dict[str, Any], a: Any, b: Any = None, *, note: str = "") -> None:
        ran.append(a)
        if ran_at is not None:
            ran_at[a] = time.time() * 1000

    worker = Worker(
        functions=[func(plain, name="record_args")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        job_deserializer=deserialize,
        keep_result=0,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def test_arqs_worker_runs_deferred_jobs_drops_expired_ones_and_frees_ids(
    app: App, redis_url: str, redis: aioredis.Redis
) -> None:
    ran: list[Any] = []
    ran_at: dict[Any, float] = {}
    expired = await app.enqueue(record_args, "expired", _expires=0.05)
    assert expired is not None
    await eventually(
        lambda: _gone(redis, f"arq:job:{expired.job_id}"), what="the job's key expired"
    )
    deferred = await app.enqueue(record_args, "deferred", _defer_by=0.5)
    assert deferred is not None
    due_ms = await redis.zscore("arq:queue", deferred.job_id)
    await app.enqueue(record_args, "now", _job_id="fixed")
    worker = await _run_arq_worker(redis_url, ran, ran_at)
    assert sorted(ran) == ["deferred", "now"]
    assert ran_at["deferred"] >= due_ms  # the deferred job waited for its time
    assert worker.jobs_failed == 1  # arq's own "job expired"
    assert await redis.zcard("arq:queue") == 0
    # keep_result=0: the id is free again as soon as its job finished
    assert await app.enqueue(record_args, "again", _job_id="fixed") is not None


async def test_jitter_spreads_jobs_uniformly_inside_its_window(
    app: App, redis: aioredis.Redis
) -> None:
    before = time.time() * 1000
    jobs = await app.enqueue_many(
        record_args, range(2000), _jitter=timedelta(seconds=60), _jitter_min=30
    )
    after = time.time() * 1000
    scores = [s for _, s in await redis.zrange("arq:queue", 0, -1, withscores=True)]
    assert len(scores) == len(jobs) == 2000
    delays = [s - before for s in scores]
    assert min(delays) >= 30_000
    assert max(s - after for s in scores) < 60_000
    # uniform on [30 s, 60 s): each 10 s third holds about a third of the jobs
    thirds = [sum(lo <= d < lo + 10_000 for d in delays) for lo in (30_000, 40_000, 50_000)]
    assert all(500 < t < 830 for t in thirds), thirds
    single = await app.enqueue(record_args, "one", _jitter=5)
    assert single is not None
    score = await redis.zscore("arq:queue", single.job_id)
    assert 0 <= score - time.time() * 1000 < 5_000


async def test_enqueue_many_returns_results_in_input_order(app: App, redis: aioredis.Redis) -> None:
    items = [1, (2, "b"), Args(3, note="kw"), Args(4, _job_id="four"), (5,)]
    jobs = await app.enqueue_many(record_args, items, batch_size=2)
    assert [j.job_id for j in jobs if j][3] == "four"
    payloads = [json.loads(await redis.get(f"arq:job:{j.job_id}")) for j in jobs if j]
    assert [(p["a"], p["k"]) for p in payloads] == [
        ([1], {}),
        ([2, "b"], {}),
        ([3], {"note": "kw"}),
        ([4], {}),
        ([5], {}),
    ]
    again = await app.enqueue_many(record_args, [Args(9, _job_id="four"), 10])
    assert again[0] is None
    assert again[1] is not None


async def test_enqueue_many_takes_async_iterators_and_shared_options(
    app: App, redis: aioredis.Redis
) -> None:
    async def rows() -> AsyncIterator[tuple[int]]:
        for i in range(25):
            yield (i,)

    jobs = await app.enqueue_many(InvoiceJob, rows(), batch_size=10, _defer_by=3600)
    assert len(jobs) == 25
    assert all(jobs)
    scores = [s for _, s in await redis.zrange("arq:queue", 0, -1, withscores=True)]
    assert min(scores) > time.time() * 1000 + 3_500_000


async def test_a_disabled_job_in_a_bulk_call_is_rejected_and_the_rest_go_through(
    settings: Settings, redis: aioredis.Redis
) -> None:
    async def odd_ids_only(request: EnqueueRequest, call_next: Any) -> Any:
        return await call_next(request) if request.args[0] % 2 else None

    async with App(settings, client_middleware=[odd_ids_only]) as app:
        await app.migrate()
        jobs = await app.enqueue_many(record_args, range(10))
        assert [j is not None for j in jobs] == [i % 2 == 1 for i in range(10)]
        assert await redis.zcard("arq:queue") == 5
        await app.flags.enable("disable_record_args")
        assert await app.enqueue_many(record_args, range(10)) == [None] * 10
        assert await redis.zcard("arq:queue") == 5
        (flag,) = await app.flags.list()
        assert flag.rejected == 10


async def test_earlier_batches_stay_when_a_later_item_is_bad(
    app: App, redis: aioredis.Redis
) -> None:
    items = [*range(10), object()]
    with pytest.raises(JobSerializationError, match="10 job"):
        await app.enqueue_many(record_args, items, batch_size=5)
    assert await redis.zcard("arq:queue") == 10
    assert len(await redis.keys("arq:job:*")) == 10  # whole jobs only: key and queue entry


@pytest.mark.slow
async def test_ten_thousand_bulk_jobs_each_run_exactly_once(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    jobs = await app.enqueue_many(count_run, range(10_000))
    assert all(jobs)
    with WorkerProcess(worker_env, cwd=ROOT):

        async def all_counted() -> bool:
            return int(await redis.hlen("counts")) >= 10_000

        await eventually(all_counted, within=120, what="10,000 jobs counted")
        # Every job is over (none queued, none running): a duplicate run would have been
        # counted by now, as a count of 2.
        await eventually(lambda: _all_over(redis), within=30, what="every job over")
        counts = await redis.hgetall("counts")
    assert len(counts) == 10_000
    assert set(counts.values()) == {b"1"}
    assert await redis.zcard("arq:queue") == 0


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


async def _all_over(redis: aioredis.Redis) -> bool:
    return not await redis.zcard("arq:queue") and not await redis.keys("arq:in-progress:*")


def _in_use(app_redis: Any) -> int:
    return len(app_redis.connection_pool._in_use_connections)


async def test_a_stream_closed_early_wrote_what_it_yielded_and_gives_its_connection_back(
    app: App, redis: aioredis.Redis
) -> None:
    seen = 0
    async with contextlib.aclosing(
        app.enqueue_stream(record_args, range(100), batch_size=10)
    ) as stream:
        async for batch in stream:
            seen += len(batch)
            break
    assert seen == 10
    # The next batch was being prepared, not sent, when the stream was closed.
    assert await redis.zcard("arq:queue") == 10
    assert _in_use(await app.redis()) == 0


async def test_a_failing_source_keeps_the_batches_sent_before_it(
    app: App, redis: aioredis.Redis
) -> None:
    def items() -> Any:
        yield from range(25)
        raise ValueError("the source broke")

    stats = BulkStats()
    with pytest.raises(ValueError, match="the source broke"):
        async for _ in app.enqueue_stream(record_args, items(), batch_size=10, stats=stats):
            pass
    # Batch two (10-19) was in Redis's hands when the source failed: it is written whole,
    # and counted.
    assert await redis.zcard("arq:queue") == 20
    assert stats.written == 20
    assert len(await redis.keys("arq:job:*")) == 20
    assert _in_use(await app.redis()) == 0


async def test_cancelling_a_bulk_enqueue_leaves_only_whole_jobs(
    app: App, redis: aioredis.Redis
) -> None:
    async def slow_items() -> AsyncIterator[int]:
        for i in range(10_000):
            if i % 100 == 0:
                await asyncio.sleep(0.001)
            yield i

    task = asyncio.create_task(app.enqueue_many(record_args, slow_items(), batch_size=500))
    # Cancel once a batch is written, midway through the rest.
    await eventually(lambda: redis.zcard("arq:queue"), interval=0.005, what="a batch written")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    queued = await redis.zcard("arq:queue")
    assert 0 < queued < 10_000
    assert queued % 500 == 0  # whole batches only
    assert len(await redis.keys("arq:job:*")) == queued
    assert _in_use(await app.redis()) == 0
    assert await app.enqueue(record_args, "after") is not None


async def test_non_ascii_ids_and_queues_are_written_like_arqs(
    app: App, redis_url: str, redis: aioredis.Redis
) -> None:
    arq = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize)
    try:
        ours = await app.enqueue(record_args, "ü", _job_id="jöb-1", _queue_name="quéue")
        theirs = await arq.enqueue_job("record_args", "ü", _job_id="jöb-2", _queue_name="quéue")
    finally:
        await arq.aclose()
    assert ours is not None
    assert theirs is not None
    await _assert_same_keys(redis, "jöb-1", "jöb-2", "quéue")
    info = await ours.info()
    assert info is not None
    assert list(info.args) == ["ü"]


async def test_a_slow_source_between_batches_is_not_mistaken_for_a_slow_redis(
    settings: Settings, redis: aioredis.Redis
) -> None:
    def items() -> Any:
        for i in range(30):
            if i and i % 10 == 0:
                time.sleep(0.5)  # the scenario, not a wait: longer than the Redis timeout
            yield i

    quick = dataclasses.replace(settings, redis_timeout=0.3)
    async with App(quick) as app:
        jobs = await app.enqueue_many(record_args, items(), batch_size=10)
    assert all(jobs)
    assert await redis.zcard("arq:queue") == 30


async def test_a_queue_key_of_another_type_fails_the_call_before_anything_is_written(
    app: App, redis: aioredis.Redis
) -> None:
    await redis.rpush("arq:queue", "not a sorted set")
    with pytest.raises(EnqueueError, match="WRONGTYPE the queue arq:queue is a list"):
        await app.enqueue(record_args, 1)
    with pytest.raises(EnqueueError, match="WRONGTYPE"):
        await app.enqueue_many(record_args, range(10))
    # The first job of the batch is for a good queue: it is not written either.
    with pytest.raises(EnqueueError, match="WRONGTYPE"):
        await app.enqueue_many(record_args, [Args(1, _queue_name="good"), Args(2)])
    assert await redis.keys("arq:job:*") == []
    assert not await redis.exists("good")
    await redis.delete("arq:queue")
    assert await app.enqueue(record_args, 1) is not None  # the connection is fine
