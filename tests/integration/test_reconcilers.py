"""Self-healing: reconcilers re-enqueue what is pending, whatever happens to Redis or a worker."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import App, Settings, stable_job_id
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT, cli
from tests.helpers import eventually, log_events, wait_for_event
from tests.recjobs import SCHEMA, pending_rows

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
    # No job reached Redis: the one key is the run's numbers, kept for the dashboard.
    assert await redis.keys() == [b"asyncjobs:reconciler:pending_rows"]


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


async def _wait_all_ready(pool: asyncpg.Pool, total: int, wait: float) -> None:
    async def all_ready() -> bool:
        ready = await pool.fetchval("SELECT count(*) FROM databases WHERE state = 'ready'")
        return bool(ready == total)

    await eventually(all_ready, within=wait, what=f"all {total} rows ready")


async def _llen_at_least(redis: aioredis.Redis, key: str, count: int) -> bool:
    return int(await redis.llen(key)) >= count


async def _assert_each_row_done_once(pool: asyncpg.Pool, total: int) -> int:
    per_row = await pool.fetch("SELECT database_id, count(*) AS n FROM effects GROUP BY 1")
    assert len(per_row) == total  # every row's side effect happened
    assert {r["n"] for r in per_row} == {1}  # and once: duplicates exited quickly
    attempts = await pool.fetchval("SELECT count(*) FROM attempts")
    assert await pool.fetchval("SELECT count(*) FROM databases WHERE state <> 'ready'") == 0
    return int(attempts)


async def _wait_ready_count(pool: asyncpg.Pool, at_least: int) -> None:
    async def processed() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM effects")) >= at_least

    await eventually(processed, within=60, what=f"{at_least} rows processed")


def _runs_between(
    workers: list[WorkerProcess], after: float, before: float
) -> list[dict[str, Any]]:
    """The reconciler runs that ended between two moments (``time.time()`` values of this
    machine's clock, which the workers' log times share), in order."""
    runs = [e for w in workers for e in log_events(w.lines, "reconciler.finished")]
    ended = [(datetime.fromisoformat(e["timestamp"]).timestamp(), e) for e in runs]
    return [e for at, e in sorted(ended, key=lambda pair: pair[0]) if after < at < before]


def _skipped(workers: list[WorkerProcess]) -> int:
    return sum(len(log_events(w.lines, "job.skipped")) for w in workers)


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
        flushed_at = time.time()
        await _wait_all_ready(pool, total, wait=90)
        done_at = time.time()
    after_flush = _runs_between([worker], flushed_at, float("inf"))
    # One of the first two reconciler runs after the flush re-enqueued the lost jobs...
    assert any(r["enqueued"] > 0 for r in after_flush[:2]), after_flush[:2]
    # ...and every row was done before a third one: within two periods of the flush.
    assert len(_runs_between([worker], flushed_at, done_at)) <= 2
    attempts = await _assert_each_row_done_once(pool, total)
    assert attempts >= total


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
        killed_at = time.time()
    finally:
        first.stop()
    with WorkerProcess(env, cwd=ROOT) as second:
        await _wait_all_ready(pool, total, wait=120)
        done_at = time.time()
    # Every row done before the reconciler's third run after the kill: within two periods.
    assert len(_runs_between([first, second], killed_at, done_at)) <= 2
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
        await eventually(
            lambda: _llen_at_least(redis, "reconciler_runs", 5), what="five periods' runs"
        )
        runs = [r.decode() for r in await redis.lrange("reconciler_runs", 0, -1)]
        await provisioning.flags.enable("disable_pending_rows")
        # The workers learn of the flag by a notification, or within ASYNCJOBS_FLAG_TTL
        # (2 s): three periods skipped, then the runs so far are counted...
        await eventually(lambda: _skipped(workers) >= 3, what="three periods skipped")
        stopped_at = await redis.llen("reconciler_runs")
        # ...and three more periods pass.
        await eventually(lambda: _skipped(workers) >= 6, what="three more periods skipped")
        after = await redis.llen("reconciler_runs")
        skipped = _skipped(workers)
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
        await wait_for_event(worker, "reconciler.failed", count=2, within=20)
        healthy_before = await redis.llen("reconciler_runs")
        await _rows(provisioning, pending=3)
        await _wait_all_ready(await provisioning.db(), 3, wait=20)
        # The healthy reconciler keeps running: another run within a few periods (the rows
        # may have been taken by a run that had started just before they were written).
        await eventually(
            lambda: _llen_at_least(redis, "reconciler_runs", healthy_before + 1),
            within=10,
            what="the healthy reconciler ran again",
        )
        assert worker.alive()
    failed = log_events(worker.lines, "reconciler.failed")
    assert failed[0]["reconciler"] == "broken_reconciler"
    assert 'relation "no_such_table" does not exist' in failed[0]["error"]
    assert await provisioning.dead.list() == []  # a failed run is not a dead letter
