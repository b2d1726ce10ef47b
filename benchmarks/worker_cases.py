"""Benchmark cases of the worker loop that need whole worker processes.

worker.recovery.sigkill, worker.drain.3_workers and worker.latency.idle. Each
starts real worker processes (``arq asyncjobs.WorkerSettings``, output
discarded) against the run's throwaway servers and measures from outside.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.cases import REPS, _app, _ensure_migrated

ROOT = Path(__file__).resolve().parent.parent


def _env(urls: dict[str, str], **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    return {
        **base,
        "PYTHONPATH": str(ROOT),
        "ASYNCJOBS_REDIS_URL": urls["redis"],
        "ASYNCJOBS_DATABASE_URL": urls["postgres"],
        "ASYNCJOBS_IMPORTS": "benchmarks.benchjobs",
        "ASYNCJOBS_LOG_FORMAT": "json",
        "BENCH_REDIS_URL": urls["redis"],
        **extra,
    }


def _start(
    env: dict[str, str], settings: str = "asyncjobs.WorkerSettings"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "arq", settings],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{what}: not within {within}s")


async def _registered(redis: Any, count: int) -> None:
    from asyncjobs._liveness import registered_workers

    async def enough() -> bool:
        return len(await registered_workers(redis)) >= count

    await _until(enough, 60, f"{count} worker(s) registered")


def worker_recovery_sigkill(urls: dict[str, str]) -> dict[str, Any]:
    """worker.recovery.sigkill: seconds from SIGKILL of a worker running 50 jobs (each
    sleeping 1 s, the default 300 s job timeout) until all 50 finished on another worker.

    Includes the dead worker's registration expiring (3 heartbeats of 2 s), the next
    beat of the live worker that recovers its jobs, claiming them and their 1 s run.
    arq alone would wait for the in-progress keys: timeout + 11 s = 311 s (computed,
    not measured). Also reported: seconds until every job had started again.
    """
    _ensure_migrated(urls)
    from benchmarks.benchjobs import sleepy

    finished: list[float] = []
    restarted: list[float] = []

    async def once() -> None:
        async with _app(urls) as app:
            redis = await app.redis()
            await redis.flushdb()
            env = _env(urls)
            first = _start(env)
            second: subprocess.Popen[bytes] | None = None
            try:
                await _registered(redis, 1)
                await app.enqueue_many(sleepy, [(i, 1.0) for i in range(50)])

                async def started(count: int) -> bool:
                    return int(await redis.llen("bench:started")) >= count

                await _until(lambda: started(50), 30, "the first worker started all 50")
                second = _start(env)
                await _registered(redis, 2)
                first.kill()
                first.wait()
                killed = time.monotonic()
                await _until(lambda: started(100), 120, "all 50 started again")
                restarted.append(time.monotonic() - killed)

                async def done() -> bool:
                    return int(await redis.hlen("bench:done")) >= 50

                await _until(done, 120, "all 50 finished elsewhere")
                finished.append(time.monotonic() - killed)
            finally:
                _stop([first] + ([second] if second else []))

    for _ in range(REPS):
        asyncio.run(once())
    value = statistics.median(finished)
    return {
        "name": "worker.recovery.sigkill",
        "value": round(value, 2),
        "unit": "s",
        "baseline": {"name": "arq.in_progress_expiry (computed)", "value": 311.0},
        "ratio": round(value / 311.0, 3),
        "target": "<= 15 s",
        "met": value <= 15,
        "runs": [round(r, 2) for r in finished],
        "notes": (
            f"50 jobs of 1 s, default timeout, heartbeat 2 s; started again after median "
            f"{statistics.median(restarted):.2f} s (runs {[round(r, 2) for r in restarted]})"
        ),
    }


def worker_drain_3_workers(urls: dict[str, str]) -> dict[str, Any]:
    """worker.drain.3_workers: three worker processes drain 30,000 jobs that each count
    their run in a Redis hash; jobs/s from the start of the enqueue (bulk) until every
    job has run, and duplicates (runs beyond one per job). Baseline: one worker process,
    same run, interleaved. On 2 cores, three processes share two CPUs with Redis."""
    _ensure_migrated(urls)
    from benchmarks.benchjobs import counted

    total = int(os.environ.get("BENCH_DRAIN3_JOBS", "30000"))

    async def once(workers: int) -> tuple[float, int]:
        async with _app(urls) as app:
            redis = await app.redis()
            await redis.flushdb()
            procs = [_start(_env(urls, ASYNCJOBS_LOG_LEVEL="warning")) for _ in range(workers)]
            try:
                await _registered(redis, workers)
                start = time.monotonic()
                await app.enqueue_many(counted, range(total))

                async def done() -> bool:
                    return int(await redis.hlen("bench:counts")) >= total

                await _until(done, 300, "every job ran")
                elapsed = time.monotonic() - start
                counts = await redis.hvals("bench:counts")
            finally:
                _stop(procs)
            return total / elapsed, sum(int(c) - 1 for c in counts)

    three: list[float] = []
    one: list[float] = []
    duplicates = 0
    for _ in range(REPS):
        rate, dups = asyncio.run(once(3))
        three.append(rate)
        duplicates += dups
        rate, dups = asyncio.run(once(1))
        one.append(rate)
        duplicates += dups
    value, baseline = statistics.median(three), statistics.median(one)
    return {
        "name": "worker.drain.3_workers",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "asyncjobs.worker.1_process", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 2),
        "target": "duplicates 0",
        "met": duplicates == 0,
        "runs": [round(r, 1) for r in three],
        "baseline_runs": [round(r, 1) for r in one],
        "notes": f"{total} jobs per run, {REPS} runs; duplicates across all runs: {duplicates}",
    }


def worker_latency_idle(urls: dict[str, str]) -> dict[str, Any]:
    """worker.latency.idle: milliseconds from ``enqueue()`` returning to the job's first
    line, on an idle worker; 100 jobs, one every 37 ms. Both clocks are this machine's.

    Ours wakes on the token the enqueue script pushes; baseline: arq's own worker
    (poll 0.05 s, as asyncjobs' default poll) running the same job enqueued the same
    way, same run. Reports p50 (value), p90 and p99.
    """
    _ensure_migrated(urls)
    from benchmarks.benchjobs import stamp

    async def once(settings: str) -> list[float]:
        async with _app(urls) as app:
            redis = await app.redis()
            await redis.flushdb()
            proc = _start(_env(urls), settings)
            try:
                if settings == "asyncjobs.WorkerSettings":
                    await _registered(redis, 1)
                else:

                    async def healthy() -> bool:
                        return bool(await redis.exists("arq:queue:health-check"))

                    await _until(healthy, 60, "arq's worker started")
                await asyncio.sleep(0.5)
                returned: dict[int, float] = {}
                for n in range(100):
                    await app.enqueue(stamp, n)
                    returned[n] = time.time()
                    await asyncio.sleep(0.037)

                async def all_ran() -> bool:
                    return int(await redis.llen("bench:stamps")) >= 100

                await _until(all_ran, 60, "every job ran")
                stamps = [s.decode().split() for s in await redis.lrange("bench:stamps", 0, -1)]
            finally:
                _stop([proc])
            return [(float(at) - returned[int(n)]) * 1000 for n, at in stamps]

    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(max(1, REPS // 2)):
        ours += asyncio.run(once("asyncjobs.WorkerSettings"))
        theirs += asyncio.run(once("benchmarks.benchjobs.ArqStampSettings"))

    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    p50, p90, p99 = pct(ours, 50), pct(ours, 90), pct(ours, 99)
    base50 = pct(theirs, 50)
    return {
        "name": "worker.latency.idle",
        "value": round(p50, 2),
        "unit": "ms p50",
        "baseline": {"name": "arq.worker.poll_0.05", "value": round(base50, 2)},
        "ratio": round(p50 / base50, 3) if base50 else None,
        "target": "p50 <= 3 ms, p99 <= 10 ms",
        "met": p50 <= 3 and p99 <= 10,
        "runs": [round(p50, 2), round(p90, 2), round(p99, 2)],
        "notes": (
            f"{len(ours)} jobs; ours p50/p90/p99 {p50:.2f}/{p90:.2f}/{p99:.2f} ms; arq's worker "
            f"p50/p90/p99 {base50:.1f}/{pct(theirs, 90):.1f}/{pct(theirs, 99):.1f} ms"
        ),
    }


def worker_drain_noop_metrics(urls: dict[str, str]) -> dict[str, Any]:
    """worker.drain.noop.metrics: worker.drain.noop with ``ASYNCJOBS_METRICS_PORT`` set
    (the endpoint served from its thread, every job counted, timed and its queue wait
    observed) against the same drain without it, each run a fresh process, interleaved
    (the side that goes first alternates). The ratio is metrics on / off; each run on
    checks that its registry counted every job.
    """
    from benchmarks.cases import _drain

    _ensure_migrated(urls)
    jobs = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
    rates: dict[str, list[float]] = {"asyncjobs": [], "asyncjobs-metrics": []}
    cpu: dict[str, list[float]] = {"asyncjobs": [], "asyncjobs-metrics": []}
    for rep in range(REPS):
        sides = ["asyncjobs", "asyncjobs-metrics"]
        for kind in sides if rep % 2 == 0 else reversed(sides):
            run = _drain(kind, urls["redis"], jobs, urls["postgres"])
            if kind == "asyncjobs-metrics" and run.get("counted") != jobs:
                raise RuntimeError(f"metrics counted {run.get('counted')} of {jobs} jobs")
            rates[kind].append(run["rate"])
            cpu[kind].append(run["cpu_seconds"] / jobs * 1e6)
    on, off = rates["asyncjobs-metrics"], rates["asyncjobs"]
    value, baseline = statistics.median(on), statistics.median(off)
    cpu_on, cpu_off = (statistics.median(cpu[kind]) for kind in ("asyncjobs-metrics", "asyncjobs"))
    return {
        "name": "worker.drain.noop.metrics",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "worker.drain.noop (metrics off)", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 3),
        "target": ">= 0.95x metrics off",
        "met": value / baseline >= 0.95,
        "runs": [round(r, 1) for r in on],
        "baseline_runs": [round(r, 1) for r in off],
        "notes": (
            f"{jobs} jobs per run, {REPS} runs of each, interleaved, kill switch on; the "
            f"worker's CPU per job (median, less sensitive to other load): {cpu_on:.1f} us "
            f"on, {cpu_off:.1f} us off, {cpu_off / cpu_on:.3f}x"
        ),
    }


def worker_drain_noop_throttled(urls: dict[str, str]) -> dict[str, Any]:
    """worker.drain.noop.throttled: worker.drain.noop with ``noop`` throttled to a rate far
    above the drain rate (1,000,000/s: every job passes the shared limiter, none waits)
    against the same drain unthrottled, each run a fresh process, interleaved (the side
    that goes first alternates). Includes, per claimed batch, reading the job names from
    the payloads and one limiter script call; excludes setting and removing the throttle
    (PostgreSQL, before and after the timed drain). The ratio is throttled / unthrottled.
    """
    from benchmarks.cases import _drain

    _ensure_migrated(urls)
    jobs = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
    rates: dict[str, list[float]] = {"asyncjobs": [], "asyncjobs-throttled": []}
    cpu: dict[str, list[float]] = {"asyncjobs": [], "asyncjobs-throttled": []}
    calls = []
    for rep in range(REPS):
        sides = ["asyncjobs", "asyncjobs-throttled"]
        for kind in sides if rep % 2 == 0 else reversed(sides):
            run = _drain(kind, urls["redis"], jobs, urls["postgres"])
            if kind == "asyncjobs-throttled":
                if not run.get("throttle_calls"):
                    raise RuntimeError("the throttled drain never called the limiter")
                calls.append(run["throttle_calls"])
            rates[kind].append(run["rate"])
            cpu[kind].append(run["cpu_seconds"] / jobs * 1e6)
    on, off = rates["asyncjobs-throttled"], rates["asyncjobs"]
    value, baseline = statistics.median(on), statistics.median(off)
    cpu_on, cpu_off = (statistics.median(cpu[k]) for k in ("asyncjobs-throttled", "asyncjobs"))
    return {
        "name": "worker.drain.noop.throttled",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "worker.drain.noop (no throttle)", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 3),
        "target": ">= 0.9x without a throttle",
        "met": value / baseline >= 0.9,
        "runs": [round(r, 1) for r in on],
        "baseline_runs": [round(r, 1) for r in off],
        "notes": (
            f"{jobs} jobs per run, {REPS} runs of each, interleaved, kill switch on, noop "
            f"throttled to 1,000,000/s; limiter calls per run {calls}; the worker's CPU per "
            f"job (median): {cpu_on:.1f} us throttled, {cpu_off:.1f} us not, "
            f"{cpu_off / cpu_on:.3f}x"
        ),
    }


WORKER_CASES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "worker.drain.noop.metrics": worker_drain_noop_metrics,
    "worker.drain.noop.throttled": worker_drain_noop_throttled,
    "worker.recovery.sigkill": worker_recovery_sigkill,
    "worker.drain.3_workers": worker_drain_3_workers,
    "worker.latency.idle": worker_latency_idle,
}
