"""Exclusive jobs: PostgreSQL advisory locks around execution, across worker processes."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from asyncjobs import App, Settings
from asyncjobs._uniqueness import advisory_key
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.helpers import eventually, log_events, wait_for_event
from tests.lockjobs import hold, optional_refresh, post_entry, refund, settle


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as app:
        await app.migrate()
        pool = await app.db()
        await pool.execute("CREATE TABLE lock_runs (n int, started float8, ended float8, pid int)")
        yield app


pytestmark = pytest.mark.slow


async def _hold_lock(
    ledger: App, redis: aioredis.Redis, account_id: int, seconds: float = 30.0
) -> None:
    """Enqueue ``hold`` on the account's lock and wait until a worker holds it; it holds
    it until :func:`_release` (or ``seconds`` pass)."""
    await ledger.enqueue(hold, account_id, seconds)
    await eventually(lambda: redis.llen("held"), what=f"a worker holds acct:{account_id}")


async def _release(redis: aioredis.Redis, account_id: int) -> None:
    await redis.set(f"release:{account_id}", 1)


async def _lock_holder(pool: asyncpg.Pool, lock: str) -> int | None:
    """The backend pid of the PostgreSQL session holding advisory lock ``lock``, if any."""
    key = advisory_key(lock) & (2**64 - 1)  # pg_locks shows a bigint key as two oids
    return await pool.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
        key >> 32,
        key & 0xFFFFFFFF,
    )


async def _session_ended(pool: asyncpg.Pool, pid: int) -> bool:
    return bool(
        await pool.fetchval("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid)
    )


async def _at_least(redis: aioredis.Redis, key: str, count: int) -> bool:
    return int(await redis.llen(key)) >= count


async def test_two_workers_never_run_two_jobs_with_one_lock_at_once(
    ledger: App, worker_env: dict[str, str]
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    workers = [WorkerProcess(env, cwd=ROOT).start() for _ in range(2)]
    try:
        jobs = await ledger.enqueue_many(post_entry, [(1, n) for n in range(50)])
        assert all(jobs)
        pool = await ledger.db()

        async def all_ran() -> bool:
            return int(await pool.fetchval("SELECT count(*) FROM lock_runs")) >= 50

        await eventually(all_ran, within=90, what="the 50 jobs all ran")
        rows = await pool.fetch("SELECT n, started, ended, pid FROM lock_runs ORDER BY started")
    finally:
        for w in workers:
            w.stop()
    assert sorted(r["n"] for r in rows) == list(range(50))  # each ran once
    for before, after in itertools.pairwise(rows):
        assert after["started"] >= before["ended"], (before, after)  # never overlapping
    assert len({r["pid"] for r in rows}) == 2  # both workers took turns
    locked = [e for w in workers for e in log_events(w.lines, "job.locked")]
    assert locked
    assert all(e["action"] == "redefer" for e in locked)
    assert not [e for w in workers for e in log_events(w.lines, "job.dead")]  # waits: not tries


async def test_a_killed_workers_lock_is_free_at_once(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    holder = WorkerProcess(env, cwd=ROOT).start()
    # The waiting job goes to a queue only the other worker reads: were the holder to take
    # it between two waits, its SIGKILL would leave it for the recovery (seconds) instead.
    other = WorkerProcess({**env, "ASYNCJOBS_QUEUES": "waiting"}, cwd=ROOT)
    pool = await ledger.db()
    try:
        await _hold_lock(ledger, redis, 1, seconds=120)  # held until the holder dies
        # The lock is the advisory lock of one PostgreSQL session: the holder's.
        session = await eventually(
            lambda: _lock_holder(pool, "acct:1"), what="a session holds acct:1's advisory lock"
        )
        other.start()
        await ledger.enqueue(hold, 1, 0, _queue_name="waiting")  # same lock: waits
        await wait_for_event(other, "job.locked", job="hold")  # refused while the holder lives
        assert await redis.llen("held") == 1  # still held by the first worker
        assert await _lock_holder(pool, "acct:1") == session
        assert holder.process is not None
        os.kill(holder.process.pid, signal.SIGKILL)
        holder.process.wait(10)
        # The lock goes with the session, which ends with the killed process's connection
        # (no lease or TTL to wait out): the waiting job takes it at one of its next tries.
        await eventually(
            lambda: _session_ended(pool, session), within=10, what="the holder's session ended"
        )
        await eventually(
            lambda: _at_least(redis, "held", 2), within=10, what="the waiting job took the lock"
        )
        taken_by = int((await redis.lindex("held", 1)).split()[1])
    finally:
        holder.stop()
        other.stop()
    assert other.process is not None
    assert taken_by == other.process.pid


async def test_on_locked_drop_drops_the_job_and_says_so(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _hold_lock(ledger, redis, 7)
        await ledger.enqueue(optional_refresh, 7)
        await wait_for_event(worker, "job.locked", job="optional_refresh")
        await _release(redis, 7)
        await wait_for_event(worker, "job.succeeded", job="hold")  # the lock is free again
        await ledger.enqueue(optional_refresh, 7)  # free now: runs
        await eventually(lambda: redis.llen("refreshed"), what="the second refresh ran")
    (event,) = log_events(worker.lines, "job.locked")
    assert (event["job"], event["action"], event["lock"]) == ("optional_refresh", "drop", "acct:7")
    assert await redis.lrange("refreshed", 0, -1) == [b"7"]


async def test_lock_waits_do_not_count_against_a_retry_the_job_asks_for(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _hold_lock(ledger, redis, 3)
        await ledger.enqueue(settle, 3)  # max_tries=2: three waits would be a third try
        await wait_for_event(worker, "job.locked", count=3, job="settle")
        await _release(redis, 3)
        await eventually(lambda: redis.llen("settled"), within=20, what="settle settled")
    assert len(log_events(worker.lines, "job.locked")) >= 2
    assert log_events(worker.lines, "job.dead") == []
    assert await redis.get("settle_runs:3") == b"2"  # the retry it asked for, then success


async def test_a_dead_letter_counts_tries_not_waits_for_the_lock(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _hold_lock(ledger, redis, 4)
        await ledger.enqueue(refund, 4)  # max_tries=1: waits, then fails for good
        await wait_for_event(worker, "job.locked", count=2, job="refund")
        await _release(redis, 4)
        await wait_for_event(worker, "job.dead", within=20)
    assert len(log_events(worker.lines, "job.locked")) >= 2
    (letter,) = await ledger.dead.list()
    assert (letter.job_name, letter.tries) == ("refund", 1)
    assert "the card is closed" in letter.error
