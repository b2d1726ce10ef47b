"""Self-healing: reconcilers re-enqueue what is pending, whatever happens to Redis or a worker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import App, JobDefinitionError, Settings, stable_job_id
from asyncjobs._reconcilers import schedule_from_every
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT, cli
from tests.recjobs import SCHEMA, create_database, pending_rows

REC = pending_rows.__asyncjobs_reconciler__  # type: ignore[attr-defined]


@pytest.fixture
async def provisioning(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as app:
        await app.migrate()
        pool = await app.db()
        await pool.execute(SCHEMA)
        yield app


async def _rows(app: App, pending: int, ready: int = 0) -> None:
    pool = await app.db()
    await pool.execute(
        "INSERT INTO databases (state) SELECT 'pending' FROM generate_series(1, $1)", pending
    )
    await pool.execute(
        "INSERT INTO databases (state) SELECT 'ready' FROM generate_series(1, $1)", ready
    )


def test_every_maps_to_clock_aligned_cron_fields() -> None:
    assert schedule_from_every(timedelta(seconds=15)) == {"second": {0, 15, 30, 45}}
    assert schedule_from_every(timedelta(minutes=1)) == {"minute": set(range(60)), "second": 0}
    assert schedule_from_every(timedelta(hours=6)) == {
        "hour": {0, 6, 12, 18},
        "minute": 0,
        "second": 0,
    }
    with pytest.raises(JobDefinitionError, match="does not divide"):
        schedule_from_every(timedelta(seconds=7 * 60))
    with pytest.raises(JobDefinitionError, match="exactly one of every= or cron="):
        asyncjobs.reconciler(job=create_database)


def test_stable_job_ids_depend_only_on_job_and_arguments() -> None:
    a = stable_job_id("create_database", (1,), {})
    assert a == stable_job_id("create_database", (1,), {})
    assert a != stable_job_id("create_database", (2,), {})
    assert a != stable_job_id("delete_database", (1,), {})
    assert a.startswith("create_database:")


async def test_a_run_enqueues_each_pending_row_once_and_again_after_its_job_ended(
    provisioning: App, redis: aioredis.Redis
) -> None:
    await _rows(provisioning, pending=30, ready=20)
    first = await REC.run(provisioning)
    assert (first.rows, first.enqueued, first.duplicates, first.rejected) == (30, 30, 0, 0)
    ids = sorted(m.decode() for m in await redis.zrange("arq:queue", 0, -1))
    assert ids == sorted(stable_job_id("create_database", (i,), {}) for i in range(1, 31))

    again = await REC.run(provisioning)  # all still queued: nothing twice
    assert (again.rows, again.enqueued, again.duplicates) == (30, 0, 30)

    for job_id in ids[:10]:  # ten jobs ended (a worker deleted their keys); rows still pending
        await redis.delete(f"arq:job:{job_id}")
        await redis.zrem("arq:queue", job_id)
    third = await REC.run(provisioning)
    assert (third.enqueued, third.duplicates) == (10, 20)


async def test_the_kill_switch_applies_to_the_jobs_a_reconciler_enqueues(
    provisioning: App, redis: aioredis.Redis
) -> None:
    await _rows(provisioning, pending=5)
    await provisioning.flags.enable("disable_create_database")
    result = await REC.run(provisioning)
    assert (result.rows, result.enqueued, result.rejected) == (5, 0, 5)
    assert await redis.dbsize() == 0


async def test_row_lock_locks_the_row_and_refuses_odd_identifiers(provisioning: App) -> None:
    await _rows(provisioning, pending=1)
    pool = await provisioning.db()
    async with pool.acquire() as a, pool.acquire() as b:
        async with asyncjobs.row_lock(a, "databases", 1) as row:
            assert row["state"] == "pending"
            with pytest.raises(asyncpg.LockNotAvailableError):
                async with asyncjobs.row_lock(b, "databases", 1, nowait=True):
                    pass
        async with asyncjobs.row_lock(b, "databases", 999) as missing:
            assert missing is None
        with pytest.raises(asyncjobs.AsyncJobsError, match="not a plain identifier"):
            async with asyncjobs.row_lock(a, "databases; DROP TABLE x", 1):
                pass


async def test_cli_lists_and_runs_a_reconciler(
    provisioning: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    await _rows(provisioning, pending=7)
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.recjobs"}
    listing = cli("reconcile", "--list", env=env)
    assert listing.returncode == 0, listing.stderr
    line = next(x for x in listing.stdout.splitlines() if x.startswith("pending_rows"))
    assert "create_database" in line
    assert "every 0:00:02" in line
    assert "running" in line
    run = cli("reconcile", "pending_rows", env=env)
    assert run.returncode == 0, run.stderr
    assert "7 pending row(s) scanned, 7 job(s) enqueued, 0 already queued" in run.stdout
    assert await redis.zcard("arq:queue") == 7
    typo = cli("reconcile", "pending_database", env=env)
    assert typo.returncode == 1
    assert "Did you mean 'pending_rows'" in typo.stderr


async def _wait_all_ready(pool: asyncpg.Pool, total: int, wait: float) -> float:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        ready = await pool.fetchval("SELECT count(*) FROM databases WHERE state = 'ready'")
        if ready == total:
            return time.monotonic()
        await asyncio.sleep(0.1)
    pending = await pool.fetchval("SELECT count(*) FROM databases WHERE state = 'pending'")
    raise AssertionError(f"{pending} of {total} rows still pending after {wait}s")


async def _assert_each_row_done_once(pool: asyncpg.Pool, total: int) -> int:
    per_row = await pool.fetch("SELECT database_id, count(*) AS n FROM effects GROUP BY 1")
    assert len(per_row) == total  # every row's side effect happened
    assert {r["n"] for r in per_row} == {1}  # and once: duplicates exited quickly
    attempts = await pool.fetchval("SELECT count(*) FROM attempts")
    assert await pool.fetchval("SELECT count(*) FROM databases WHERE state <> 'ready'") == 0
    return int(attempts)


async def _wait_ready_count(pool: asyncpg.Pool, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if await pool.fetchval("SELECT count(*) FROM effects") >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} rows were processed in 60 s")


@pytest.mark.slow
async def test_flushall_midway_loses_no_work(
    provisioning: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    total = 1000
    await _rows(provisioning, pending=total)
    pool = await provisioning.db()
    env = {
        **worker_env,
        "ASYNCJOBS_IMPORTS": "tests.recjobs",
        "REC_DELAY": "0.01",
        "REC_EVERY": "3",
    }
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _wait_ready_count(pool, 200)
        await redis.flushall()  # queue, in-progress keys, results: everything
        flushed_at, flushed_wall = time.monotonic(), time.time()
        done = await _wait_all_ready(pool, total, wait=90)
        runs = [json.loads(x) for x in worker.lines if '"reconciler.finished"' in x]
    assert done - flushed_at < 2 * 3.0  # every row done within two periods of the flush
    attempts = await _assert_each_row_done_once(pool, total)
    assert attempts >= total
    # a run after the flush re-enqueued the lost jobs, within two periods (2 s each)
    healing = [
        datetime.fromisoformat(r["timestamp"]).timestamp() - flushed_wall
        for r in runs
        if r["enqueued"] > 0
    ]
    after_flush = [t for t in healing if t > 0]
    assert after_flush, "no reconciler run re-enqueued anything after the flush"
    assert after_flush[0] < 2 * 3.0
    print(f"healed {after_flush[0]:.2f}s after the flush; all ready {done - flushed_at:.2f}s after")


@pytest.mark.slow
async def test_a_worker_killed_midway_loses_no_work(
    provisioning: App, worker_env: dict[str, str]
) -> None:
    total = 1000
    await _rows(provisioning, pending=total)
    pool = await provisioning.db()
    # The jobs the killed worker held run again once the second worker finds its
    # registration expired (3 heartbeats), whatever their timeout (the default here):
    # well within two reconciler periods of 10 s.
    env = {
        **worker_env,
        "ASYNCJOBS_IMPORTS": "tests.recjobs",
        "REC_DELAY": "0.01",
        "REC_EVERY": "10",
    }
    first = WorkerProcess(env, cwd=ROOT).start()
    try:
        await _wait_ready_count(pool, 200)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        killed_at = time.monotonic()
    finally:
        first.stop()
    with WorkerProcess(env, cwd=ROOT):
        done = await _wait_all_ready(pool, total, wait=120)
    assert done - killed_at < 2 * 10.0  # every row done within two periods of the kill
    await _assert_each_row_done_once(pool, total)


@pytest.mark.slow
async def test_three_workers_run_the_reconciler_once_per_period_and_its_flag_stops_it(
    provisioning: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.recjobs", "REC_EVERY": "1"}
    workers = [WorkerProcess(env, cwd=ROOT) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        await asyncio.sleep(6)
        runs = [r.decode() for r in await redis.lrange("reconciler_runs", 0, -1)]
        await provisioning.flags.enable("disable_pending_rows")
        await asyncio.sleep(2.5)  # the workers' flag caches refresh within ASYNCJOBS_FLAG_TTL
        stopped_at = await redis.llen("reconciler_runs")
        await asyncio.sleep(3)
        after = await redis.llen("reconciler_runs")
        skipped = sum('"job.skipped"' in line for w in workers for line in w.lines)
    finally:
        for w in workers:
            w.stop()
    assert len(runs) >= 4
    assert len(runs) == len(set(runs))  # no period ran twice
    periods = sorted(int(r.rsplit(":", 1)[1]) for r in runs)
    assert all(b - a == 1000 for a, b in itertools.pairwise(periods))
    assert after == stopped_at  # the flag stopped the reconciler
    assert skipped >= 2


@pytest.mark.slow
async def test_a_broken_reconciler_logs_reconciler_failed_and_the_rest_keeps_running(
    provisioning: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {
        **worker_env,
        "ASYNCJOBS_IMPORTS": "tests.recjobs,tests.brokenrec",
        "REC_EVERY": "1",
    }
    with WorkerProcess(env, cwd=ROOT) as worker:
        worker.wait_for('"reconciler.failed"', count=2, timeout=20)
        healthy_before = await redis.llen("reconciler_runs")
        await _rows(provisioning, pending=3)
        await _wait_all_ready(await provisioning.db(), 3, wait=20)
        # The healthy reconciler keeps running: another run within a few periods (the rows
        # may have been taken by a run that had started just before they were written).
        deadline = time.monotonic() + 10
        while await redis.llen("reconciler_runs") <= healthy_before:
            assert time.monotonic() < deadline, "the healthy reconciler stopped running"
            await asyncio.sleep(0.1)
        assert worker.alive()
    failed = [json.loads(x) for x in worker.lines if '"reconciler.failed"' in x]
    assert failed[0]["reconciler"] == "broken_reconciler"
    assert 'relation "no_such_table" does not exist' in failed[0]["error"]
    assert await provisioning.dead.list() == []  # a failed run is not a dead letter
