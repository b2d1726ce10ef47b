"""enqueue.transactional: ``enqueue(job, i, _connection=conn)`` in the caller's transaction,
and the relay that moves committed rows to Redis (:mod:`asyncjobs._outbox`)."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.cases import REPS, _app, _ensure_migrated

TRANSACTIONS = 50
PER_TRANSACTION = 200
LATENCY_SAMPLES = 200


def _start_relay(urls: dict[str, str]) -> subprocess.Popen[str]:
    relay = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._relay", urls["redis"], urls["postgres"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert relay.stdout is not None
    if relay.stdout.readline().strip() != "ready":
        relay.kill()
        raise RuntimeError("the relay process did not start")
    return relay


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _transactional(app: Any, pool: Any) -> tuple[float, float]:
    """(jobs/s until the last commit, jobs/s until the last job is in Redis)."""
    from benchmarks.benchjobs import noop

    total = TRANSACTIONS * PER_TRANSACTION
    redis = await app.redis()
    await redis.flushdb()

    async def one() -> None:
        async with pool.acquire() as conn, conn.transaction():
            for i in range(PER_TRANSACTION):
                await app.enqueue(noop, i, _connection=conn)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(TRANSACTIONS)))
    committed = time.perf_counter() - start
    while True:  # the relay process writes them: look until all are there
        if await redis.zcard("arq:queue") >= total:
            break
        await asyncio.sleep(0.005)
    return total / committed, total / (time.perf_counter() - start)


async def _direct(app: Any) -> float:
    """jobs/s of plain enqueue() to Redis from as many tasks as there are transactions."""
    from benchmarks.benchjobs import noop

    redis = await app.redis()
    await redis.flushdb()

    async def one() -> None:
        for i in range(PER_TRANSACTION):
            await app.enqueue(noop, i)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(TRANSACTIONS)))
    return TRANSACTIONS * PER_TRANSACTION / (time.perf_counter() - start)


async def _latencies(app: Any, pool: Any) -> list[float]:
    """ms from each commit returning until its job's wake-up token is in Redis."""
    from asyncjobs._claim import wake_key
    from benchmarks.benchjobs import noop

    redis = await app.redis()
    await redis.flushdb()
    token = wake_key("arq:queue")
    found = []
    async with pool.acquire() as conn:
        for i in range(LATENCY_SAMPLES):
            await redis.delete(token)
            async with conn.transaction():
                await app.enqueue(noop, i, _connection=conn)
            committed = time.perf_counter()
            if await redis.blpop([token], timeout=10) is None:
                raise RuntimeError("a committed job did not reach Redis within 10 s")
            found.append((time.perf_counter() - committed) * 1000)
    return found


Runs = tuple[list[float], list[float], list[float], list[float]]


async def _measure(urls: dict[str, str]) -> Runs:
    """(rates until committed, rates until in Redis, baseline rates, latencies in ms)."""
    import asyncpg

    from benchmarks.benchjobs import noop

    rates, ready_rates, base = [], [], []
    async with _app(urls, flag_ttl=3600.0) as app:
        await app.flags.enable("disable_some_other_job")
        await app.enqueue(noop, 0)  # warm: pools open, flags loaded
        async with asyncpg.create_pool(
            urls["postgres"], min_size=TRANSACTIONS, max_size=TRANSACTIONS
        ) as pool:
            for _ in range(REPS):
                rate, ready = await _transactional(app, pool)
                rates.append(rate)
                ready_rates.append(ready)
                base.append(await _direct(app))
            waits = await _latencies(app, pool)
        await (await app.redis()).flushdb()
    return rates, ready_rates, base, waits


def enqueue_transactional(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.transactional: 50 concurrent transactions of 200 transactional enqueues each
    (10,000 jobs) while a relay process (as every worker runs) moves them to Redis.

    The rate is jobs / seconds from the first transaction's start until the last commit:
    each enqueue is the client chain (kill switch on, warm cache), the option checks, the
    JSON payload and one INSERT with its NOTIFY on the caller's connection. The time until
    the last job is ready in Redis is reported as a second rate. Baseline: plain
    ``enqueue()`` straight to Redis from 50 tasks, in the same run, interleaved.
    Latency: one transaction, one enqueue, commit; then the time from the commit returning
    until the job is ready in Redis (the wake-up token its Redis write pushes, read with
    BLPOP), 200 samples, one after another; p50 and p99.
    """
    _ensure_migrated(urls)
    total = TRANSACTIONS * PER_TRANSACTION
    relay = _start_relay(urls)
    try:
        rates, ready_rates, base, waits = asyncio.run(_measure(urls))
    finally:
        relay.kill()
        relay.wait()
    value, baseline = statistics.median(rates), statistics.median(base)
    p50, p99 = statistics.median(waits), _percentile(waits, 0.99)
    return {
        "name": "enqueue.transactional",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "enqueue.direct.concurrent_50", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 2),
        "target": ">= 5000 jobs/s committed; commit -> ready in Redis p50 < 20 ms",
        "met": value >= 5000 and p50 < 20,
        "runs": [round(r, 1) for r in rates],
        "baseline_runs": [round(r, 1) for r in base],
        "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(max(waits), 2)},
        "notes": (
            f"{total} jobs per run from {TRANSACTIONS} concurrent transactions, {REPS} runs; "
            f"all ready in Redis at a median {statistics.median(ready_rates):.0f} jobs/s "
            f"(start to last job relayed; one relay process); commit -> ready in Redis over "
            f"{LATENCY_SAMPLES} sequential commits: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
            f"max {max(waits):.2f} ms"
        ),
    }


OUTBOX_CASES = {"enqueue.transactional": enqueue_transactional}
