"""Exclusive jobs: PostgreSQL advisory locks around execution, across worker processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import App, JobDefinitionError, Settings
from asyncjobs._uniqueness import advisory_key
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.lockjobs import hold, optional_refresh, post_entry, refund, settle


def test_advisory_keys_are_stable_signed_64_bit_integers() -> None:
    key = advisory_key("invoice:42")
    assert key == advisory_key("invoice:42")
    assert key != advisory_key("invoice:43")
    assert -(2**63) <= key < 2**63
    # pinned: a change would let two versions of asyncjobs hold "one" lock twice
    assert key == int.from_bytes(
        __import__("hashlib").blake2b(b'"invoice:42"', digest_size=8).digest(), "big", signed=True
    )


def test_bad_lock_options_are_refused() -> None:
    async def f(ctx: dict[str, object], x: int) -> None: ...

    for options, message in [
        ({"lock": "invoice"}, "must be a callable"),
        ({"exclusive": True, "on_locked": "wait"}, "'redefer' or 'drop'"),
        ({"exclusive": True, "lock_retry": 0}, "positive"),
    ]:
        with pytest.raises(JobDefinitionError, match=message):
            asyncjobs.job(registry=asyncjobs.Registry(), **options)(f)  # type: ignore[call-overload]


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as app:
        await app.migrate()
        pool = await app.db()
        await pool.execute("CREATE TABLE lock_runs (n int, started float8, ended float8, pid int)")
        yield app


pytestmark = pytest.mark.slow


async def _hold_lock(ledger: App, redis: aioredis.Redis, account_id: int, seconds: float) -> None:
    """Enqueue ``hold`` on the account's lock and wait until a worker holds it."""
    await ledger.enqueue(hold, account_id, seconds)
    while not await redis.llen("held"):
        await asyncio.sleep(0.02)


async def test_two_workers_never_run_two_jobs_with_one_lock_at_once(
    ledger: App, worker_env: dict[str, str]
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    workers = [WorkerProcess(env, cwd=ROOT).start() for _ in range(2)]
    try:
        jobs = await ledger.enqueue_many(post_entry, [(1, n) for n in range(50)])
        assert all(jobs)
        pool = await ledger.db()
        deadline = time.monotonic() + 90
        while await pool.fetchval("SELECT count(*) FROM lock_runs") < 50:
            assert time.monotonic() < deadline, "the 50 jobs did not all run"
            await asyncio.sleep(0.1)
        rows = await pool.fetch("SELECT n, started, ended, pid FROM lock_runs ORDER BY started")
    finally:
        for w in workers:
            w.stop()
    assert sorted(r["n"] for r in rows) == list(range(50))  # each ran once
    for before, after in itertools.pairwise(rows):
        assert after["started"] >= before["ended"], (before, after)  # never overlapping
    assert len({r["pid"] for r in rows}) == 2  # both workers took turns
    locked = [json.loads(x) for w in workers for x in w.lines if '"job.locked"' in x]
    assert locked
    assert all(e["action"] == "redefer" for e in locked)
    assert not any('"job.dead"' in x for w in workers for x in w.lines)  # waits are not tries


async def test_a_killed_workers_lock_is_free_at_once(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    holder = WorkerProcess(env, cwd=ROOT).start()
    # The waiting job goes to a queue only the other worker reads: were the holder to take
    # it between two waits, its SIGKILL would leave it for the recovery (seconds) instead.
    other = WorkerProcess({**env, "ASYNCJOBS_QUEUES": "waiting"}, cwd=ROOT)
    try:
        await ledger.enqueue(hold, 1, 60)
        deadline = time.monotonic() + 20
        while not await redis.llen("held"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        other.start()
        await ledger.enqueue(hold, 1, 0, _queue_name="waiting")  # same lock: waits
        await asyncio.sleep(0.5)
        assert await redis.llen("held") == 1  # still held by the first worker
        assert holder.process is not None
        os.kill(holder.process.pid, signal.SIGKILL)
        killed_at = time.time()
        while await redis.llen("held") < 2:
            assert time.time() - killed_at < 10
            await asyncio.sleep(0.01)
        taken_at = float((await redis.lindex("held", 1)).split()[0])
    finally:
        holder.stop()
        other.stop()
    assert taken_at - killed_at < 1.0  # freed with the session, not after a TTL


async def test_on_locked_drop_drops_the_job_and_says_so(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _hold_lock(ledger, redis, 7, 1.0)
        await ledger.enqueue(optional_refresh, 7)
        worker.wait_for('"job.locked"')
        await asyncio.sleep(1.2)
        await ledger.enqueue(optional_refresh, 7)  # free now: runs
        while not await redis.llen("refreshed"):
            await asyncio.sleep(0.02)
    (event,) = [json.loads(x) for x in worker.lines if '"job.locked"' in x]
    assert (event["job"], event["action"], event["lock"]) == ("optional_refresh", "drop", "acct:7")
    assert await redis.lrange("refreshed", 0, -1) == [b"7"]


async def test_lock_waits_do_not_count_against_a_retry_the_job_asks_for(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _hold_lock(ledger, redis, 3, 1.0)
        await ledger.enqueue(settle, 3)  # max_tries=2; waits about 20 times for the lock
        deadline = time.monotonic() + 20
        while not await redis.llen("settled"):
            assert time.monotonic() < deadline, worker.output
            await asyncio.sleep(0.05)
    assert sum('"job.locked"' in x for x in worker.lines) >= 2
    assert not any('"job.dead"' in x for x in worker.lines)
    assert await redis.get("settle_runs:3") == b"2"  # the retry it asked for, then success


async def test_a_dead_letter_counts_tries_not_waits_for_the_lock(
    ledger: App, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.lockjobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await _hold_lock(ledger, redis, 4, 0.5)
        await ledger.enqueue(refund, 4)  # waits about 10 times, then fails for good
        worker.wait_for('"job.dead"', timeout=20)
    assert sum('"job.locked"' in x for x in worker.lines) >= 2
    (letter,) = await ledger.dead.list()
    assert (letter.job_name, letter.tries) == ("refund", 1)
    assert "the card is closed" in letter.error
