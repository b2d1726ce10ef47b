"""asyncjobs' own worker loop, as real worker processes against real servers.

Crash recovery, the graceful stop, many workers on one queue, arq's Job API and
arq's own worker on what the loop writes, every queue, unknown jobs kept as dead
letters, one JSON log stream, and the wake-up on enqueue.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.jobs import Job, JobStatus
from arq.worker import Worker as ArqWorker
from arq.worker import func

from asyncjobs import App
from asyncjobs.serializer import deserialize, serialize
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT, cli
from tests.corejobs import (
    billing_job,
    count_once,
    echo,
    fails_twice,
    guarded_effect,
    report_frozen,
    slow_first_time,
    stamp,
)
from tests.helpers import eventually, log_events, wait_for_event

pytestmark = pytest.mark.slow


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Wait until ``check`` is true, or fail saying ``what`` after ``within`` seconds."""
    await eventually(check, within=within, what=what)


def events(worker: WorkerProcess, name: str) -> list[dict[str, Any]]:
    return log_events(worker.lines, name)


@pytest.fixture
def core_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ASYNCJOBS_IMPORTS": "tests.corejobs"}


async def _items(database_url: str, count: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, done bool NOT NULL DEFAULT false, "
            "effects int NOT NULL DEFAULT 0)"
        )
        await conn.executemany("INSERT INTO items (id) VALUES ($1)", [(i,) for i in range(count)])
    finally:
        await conn.close()


async def test_a_sigkilled_workers_jobs_run_again_elsewhere_long_before_their_timeout(
    core_env: dict[str, str], app: App, redis: aioredis.Redis, database_url: str
) -> None:
    await app.migrate()
    await _items(database_url, 20)
    # The default job timeout (300 s): arq's in-progress keys would strand these for 311 s.
    assert "ASYNCJOBS_JOB_TIMEOUT" not in core_env
    first = WorkerProcess(core_env, cwd=ROOT).start()
    try:
        # Each job works until the key "go" is set: the first worker dies mid-work.
        jobs = await app.enqueue_many(guarded_effect, [(i, 120.0) for i in range(20)])
        await until(lambda: _llen(redis, "started", 20), "the first worker started every job")
        first.process.kill()  # type: ignore[union-attr]
        first.process.wait()  # type: ignore[union-attr]
    finally:
        first.stop()
    await redis.set("go", 1)
    dead_id = events(first, "worker.started")[0]["worker_id"]
    with WorkerProcess(core_env, cwd=ROOT) as second:
        conn = await asyncpg.connect(database_url)
        try:

            async def all_done() -> bool:
                return bool(await conn.fetchval("SELECT bool_and(done) FROM items"))

            # Without recovery the jobs would wait for their in-progress keys (311 s), far
            # past this deadline; the benchmark worker.recovery.sigkill measures the figure
            # (target 15 s).
            await until(all_done, "the second worker finished the killed worker's jobs", 60)
            effects = await conn.fetch("SELECT id, effects FROM items ORDER BY id")
        finally:
            await conn.close()
        await wait_for_event(second, "worker.recovered")
    assert [r["effects"] for r in effects] == [1] * 20  # each effect once: row_lock guards it
    recovered = events(second, "worker.recovered")
    assert [e["dead_worker_id"] for e in recovered] == [dead_id]
    assert sorted(recovered[0]["job_ids"]) == sorted(j.job_id for j in jobs if j is not None)
    assert await redis.zcard("arq:queue") == 0
    assert await redis.keys("arq:in-progress:*") == []


async def test_sigterm_hands_running_jobs_back_after_the_grace_and_another_worker_runs_them(
    core_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**core_env, "ASYNCJOBS_SHUTDOWN_GRACE": "1"}
    first = WorkerProcess(env, cwd=ROOT).start()
    try:
        await app.enqueue_many(slow_first_time, [(i,) for i in range(5)])
        await until(lambda: _hlen(redis, "slow-runs", 5), "the first worker started every job")
        first.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        # It stops after its grace (1 s), not when the jobs end (never): or this raises.
        code = first.process.wait(timeout=1 + 5)  # type: ignore[union-attr]
    finally:
        first.stop()
    assert code == 0
    stopping = events(first, "worker.stopping")
    assert stopping[0]["signal"] == "SIGTERM"
    assert stopping[0]["running"] == 5
    assert sorted(e["job_id"] for e in events(first, "job.requeued")) == sorted(
        j.decode() for j in await redis.zrange("arq:queue", 0, -1)
    )
    assert await redis.keys("arq:in-progress:*") == []  # handed back at once, not left to expire
    with WorkerProcess(env, cwd=ROOT):
        await until(lambda: _zcard_is(redis, "arq:queue", 0), "the second worker ran the jobs", 30)
    tries = [json.loads(t) for t in await redis.lrange("slow-tries", 0, -1)]
    assert sorted(n for n, _ in tries) == sorted([*range(5), *range(5)])
    assert all(job_try == 1 for _, job_try in tries)  # a hand-back is not a try


@pytest.mark.parametrize("workers", [2, 3])
async def test_many_workers_drain_a_queue_and_run_every_job_exactly_once(
    core_env: dict[str, str], app: App, redis: aioredis.Redis, workers: int
) -> None:
    total = 20_000  # 40 full claims of 500 shared by the workers: races enough, in less time
    procs = [WorkerProcess(core_env, cwd=ROOT).start() for _ in range(workers)]
    try:
        await app.enqueue_many(count_once, range(total))
        await until(lambda: _zcard_is(redis, "arq:queue", 0), "the workers drained the queue", 120)
    finally:
        for proc in procs:
            proc.stop()
    counts = await redis.hgetall("counts")
    assert len(counts) == total
    assert {int(v) for v in counts.values()} == {1}
    succeeded = sum(len(events(p, "job.succeeded")) for p in procs)
    assert succeeded == total


async def test_arqs_job_api_reads_jobs_the_loop_ran(
    core_env: dict[str, str], app: App, redis_url: str
) -> None:
    env = {**core_env, "ASYNCJOBS_KEEP_RESULT": "60"}
    with WorkerProcess(env, cwd=ROOT):
        job = await app.enqueue(echo, {"answer": 42})
        assert job is not None
        assert await job.result(timeout=20, poll_delay=0.05) == {"answer": 42}
        arq_pool = await _arq_pool(redis_url)
        try:
            theirs = Job(job.job_id, arq_pool, _deserializer=deserialize)
            assert await theirs.status() == JobStatus.complete
            info = await theirs.result_info()
            assert info is not None
            assert (info.function, info.args, info.success) == ("echo", [{"answer": 42}], True)
            assert info.job_try == 1
            assert info.result == {"answer": 42}
            queued = await app.enqueue(echo, 1, _defer_by=600)
            assert queued is not None
            assert await Job(queued.job_id, arq_pool).status() == JobStatus.deferred
        finally:
            await arq_pool.aclose()


async def test_arqs_own_worker_and_the_loop_share_a_queue_without_running_a_job_twice(
    core_env: dict[str, str], app: App, redis: aioredis.Redis, redis_url: str
) -> None:
    total = 3000

    async def bare_count_once(ctx: dict[str, Any], n: int) -> None:
        await ctx["redis"].hincrby("counts", str(n), 1)
        await ctx["redis"].hincrby("by", "arq", 1)

    await app.enqueue_many(count_once, range(total))
    theirs = ArqWorker(
        functions=[func(bare_count_once, name="count_once")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        burst=True,
        handle_signals=False,
        max_jobs=20,
        poll_delay=0.01,
        keep_result=0,
    )
    arq_run = asyncio.create_task(theirs.async_run())  # arq's starts first: it takes some
    ours = await asyncio.to_thread(WorkerProcess(core_env, cwd=ROOT).start)  # arq's keeps going
    try:
        await until(lambda: _zcard_is(redis, "arq:queue", 0), "the queue drained", 60)
        await asyncio.wait_for(arq_run, 30)
    finally:
        ours.stop()
    await theirs.close()
    counts = await redis.hgetall("counts")
    assert len(counts) == total
    assert {int(v) for v in counts.values()} == {1}
    assert 0 < int(await redis.hget("by", "arq") or 0) < total  # both workers ran some


async def test_a_default_worker_reads_the_queues_its_jobs_name(
    core_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    with WorkerProcess(core_env, cwd=ROOT) as worker:
        job = await app.enqueue(billing_job, 7)
        assert job is not None
        await until(lambda: _llen(redis, "billing-runs", 1), "the billing job ran")
    assert events(worker, "worker.started")[0]["queues"] == ["arq:queue", "billing"]
    assert await redis.zcard("billing") == 0


async def test_asyncjobs_queues_limits_what_a_worker_reads(
    core_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**core_env, "ASYNCJOBS_QUEUES": "billing"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await app.enqueue(billing_job, 1)
        await app.enqueue(count_once, 1)
        await until(lambda: _llen(redis, "billing-runs", 1), "the billing job ran")
    assert events(worker, "worker.started")[0]["queues"] == ["billing"]
    assert await redis.zcard("arq:queue") == 1  # not this worker's queue


async def test_an_unknown_job_is_kept_as_a_dead_letter_and_runs_after_retry_once_known(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    payload = {"t": None, "f": "late_job", "a": [5], "k": {}, "et": int(time.time() * 1000)}
    await redis.set("arq:job:early", json.dumps(payload))
    await redis.zadd("arq:queue", {"early": time.time() * 1000})
    with WorkerProcess(worker_env, cwd=ROOT) as old:  # does not know late_job
        await wait_for_event(old, "job.dead")
    (letter,) = await app.dead.list()
    assert (letter.reason, letter.job_name, letter.job_id) == ("unknown_job", "late_job", "early")
    assert await redis.zcard("arq:queue") == 0
    new_env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.workerjobs,tests.latejobs"}
    with WorkerProcess(new_env, cwd=ROOT):
        # The operator's CLI does not import tests.latejobs: the payload goes back as it was.
        result = cli("dead", "retry", str(letter.id), env=worker_env)
        assert result.returncode == 0, result.stderr
        await until(lambda: _llen(redis, "late-runs", 1), "the retried job ran")
        await until(lambda: _no_dead_letters(app), "its dead letter was removed")
    assert await redis.lrange("late-runs", 0, -1) == [b"5"]


async def test_every_line_of_a_json_worker_log_is_json_with_one_traceback_per_failure(
    core_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    with WorkerProcess(core_env, cwd=ROOT) as worker:
        await app.enqueue(fails_twice, 1)
        await app.enqueue(echo, "fine")
        await wait_for_event(worker, "job.dead")
    lines = [line for line in worker.lines if line.strip()]
    parsed = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert {"worker.started", "job.retrying", "job.failed", "job.dead", "worker.stopped"} <= {
        p["event"] for p in parsed
    }
    with_traceback = [p for p in parsed if "Traceback" in json.dumps(p)]
    assert [p["event"] for p in with_traceback] == ["job.failed"]
    assert "ValueError: bad value 1" in with_traceback[0]["exception"]


async def test_an_idle_worker_starts_a_new_job_without_waiting_for_its_next_poll(
    core_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**core_env, "ASYNCJOBS_POLL_DELAY": "30"}  # polling alone: up to 30 s per job
    with WorkerProcess(env, cwd=ROOT):
        for n in range(3):
            await until(lambda: _blocked_on_wake_up(redis), "the worker is idle, blocked")
            job = await app.enqueue(stamp, n)
            assert job is not None
            await until(lambda n=n: _llen(redis, "stamps", n + 1), "the job started", 10)


async def _arq_pool(redis_url: str) -> Any:
    from arq.connections import create_pool

    return await create_pool(RedisSettings.from_dsn(redis_url), job_deserializer=deserialize)


async def _llen(redis: aioredis.Redis, key: str, at_least: int) -> bool:
    return int(await redis.llen(key)) >= at_least


async def _hlen(redis: aioredis.Redis, key: str, at_least: int) -> bool:
    return int(await redis.hlen(key)) >= at_least


async def _zcard_is(redis: aioredis.Redis, key: str, count: int) -> bool:
    return int(await redis.zcard(key)) == count


async def _no_dead_letters(app: App) -> bool:
    return not await app.dead.list()


async def _blocked_on_wake_up(redis: aioredis.Redis) -> bool:
    """Whether a client of this test's Redis database waits in BLPOP (on the wake-up lists)."""
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    return any(
        c["cmd"] == "blpop" and "b" in c["flags"] and int(c["db"]) == db
        for c in await redis.client_list()
    )


async def test_jobs_held_without_an_outcome_are_handed_back_when_the_worker_stops(
    app: App, redis: aioredis.Redis
) -> None:
    from asyncjobs.runner import Worker

    worker = Worker(app, handle_signals=False)
    running = asyncio.create_task(worker.run())
    await until(lambda: _exists(redis, f"asyncjobs:worker:{worker.id}"), "the worker registered")
    # What a stop leaves when it cancels a claimed job's task before the task first ran:
    # the job held in Redis (in-progress key, try counted, in the worker's set), no outcome.
    job = await app.enqueue(echo, 1, _defer_by=3600)
    assert job is not None
    await redis.set(f"arq:in-progress:{job.job_id}", worker.id)
    await redis.incr(f"arq:retry:{job.job_id}")
    await redis.sadd(f"asyncjobs:worker-jobs:{worker.id}", job.job_id)
    worker.stop(now=True)
    await asyncio.wait_for(running, 30)
    assert not await redis.exists(f"arq:in-progress:{job.job_id}")  # handed back
    assert not await redis.exists(f"arq:retry:{job.job_id}")  # the try not counted
    assert await redis.zscore("arq:queue", job.job_id) is not None  # still queued
    assert not await redis.exists(f"asyncjobs:worker:{worker.id}")  # deregistered


async def _exists(redis: aioredis.Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def test_a_worker_process_freezes_its_startup_objects_and_an_in_process_one_does_not(
    core_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    from asyncjobs.runner import Worker

    before = gc.get_freeze_count()
    await app.migrate()
    await app.enqueue(report_frozen)
    worker = Worker(app, burst=True, handle_signals=False, poll_delay=0.01)
    await asyncio.wait_for(worker.run(), 30)
    assert gc.get_freeze_count() == before  # a test process's objects are left alone
    await redis.delete("frozen")
    with WorkerProcess(core_env, cwd=ROOT):
        await app.enqueue(report_frozen)
        await until(lambda: _llen(redis, "frozen", 1), "report_frozen ran in the process")
    frozen = await redis.lrange("frozen", 0, -1)
    # Modules' functions and classes, the App... (how many depends on the Python: 3.12
    # makes many objects immortal, and the collector no longer tracks those).
    assert int(frozen[0]) > 0
