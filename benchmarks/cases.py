"""Benchmark cases. Each takes the servers' URLs and returns a result dict."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

REPS = int(os.environ.get("BENCH_REPS", "5"))


def _child(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.MODULE ARGS`` in a fresh process; its last line is JSON."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def _drain(kind: str, redis_url: str, jobs: int, *extra: str) -> dict[str, Any]:
    data = _child("_drain", kind, redis_url, str(jobs), *extra)
    if data["jobs"] != jobs:
        raise RuntimeError(f"{kind} completed {data['jobs']} of {jobs} jobs")
    data["rate"] = jobs / data["seconds"]
    return data


def worker_drain_noop(urls: dict[str, str]) -> dict[str, Any]:
    """worker.drain.noop: one worker process drains a queue of 20,000 no-op jobs.

    Includes everything asyncjobs' worker loop does per job: its share of the
    batched Lua claim (in-progress key, try counter, running set) and finish
    calls, JSON decoding and checks of the payload, the execution wrapper (the
    kill switch's execution gate, with flags loaded from PostgreSQL, the job's
    timeout, one ``job.succeeded`` event written as JSON). Excludes filling the
    queue (pipelines, beforehand) and interpreter start-up. Baseline: arq's
    Worker tuned alike (max_jobs 500, poll 0.05, no results kept) with no
    wrapper, in the same run, interleaved; arq with its defaults is reported too.
    Each run is a fresh child process; the rate is jobs / seconds of the run.
    """
    _ensure_migrated(urls)
    jobs = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
    ours: list[float] = []
    tuned: list[float] = []
    defaults: list[float] = []
    rss: list[int] = []
    for _ in range(REPS):
        run = _drain("asyncjobs", urls["redis"], jobs, urls["postgres"])
        ours.append(run["rate"])
        rss.append(run["max_rss_kb"])
        tuned.append(_drain("arq-tuned", urls["redis"], jobs)["rate"])
        defaults.append(_drain("arq", urls["redis"], jobs)["rate"])
    value, baseline = statistics.median(ours), statistics.median(tuned)
    ratio = value / baseline
    return {
        "name": "worker.drain.noop",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "arq.worker.tuned", "value": round(baseline, 1)},
        "ratio": round(ratio, 2),
        "target": ">= 5000 jobs/s and >= 2x baseline",
        "met": value >= 5000 and ratio >= 2,
        "runs": [round(r, 1) for r in ours],
        "baseline_runs": [round(r, 1) for r in tuned],
        "notes": (
            f"{jobs} jobs per run, {REPS} runs, kill switch on; arq with its defaults: median "
            f"{statistics.median(defaults):.0f} jobs/s (runs {[round(t) for t in defaults]}); "
            f"peak RSS {max(rss) // 1024} MiB"
        ),
    }


CASES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "worker.drain.noop": worker_drain_noop,
}


# -- the kill switch ---------------------------------------------------------


def _app(urls: dict[str, str], **overrides: Any) -> Any:
    import asyncjobs

    return asyncjobs.App(
        asyncjobs.Settings(
            redis_url=urls["redis"], database_url=urls["postgres"], log_level="error", **overrides
        )
    )


def _bench_spec(name: str = "bench_charge") -> Any:
    """A job spec with a ``customer_id``, ``amount`` and ``region``, outside any registry."""
    from asyncjobs._jobs import build_spec

    async def bench_charge(
        ctx: Any, invoice_id: int, customer_id: int, amount: float = 0.0, region: str = "eu"
    ) -> None:
        return None

    return build_spec(bench_charge, name=name)


def _per_call(call: Callable[[], Any], n: int) -> float:
    """Seconds of this process's CPU per call: on a shared machine, wall time would also
    count the other processes' turns on the CPU, which is not what a check costs."""
    import time
    import timeit

    return timeit.Timer(call, timer=time.process_time).timeit(number=n) / n


def flags_check_warm(urls: dict[str, str]) -> dict[str, Any]:
    """flags.check.warm: one kill-switch check on a warm cache, as the enqueue and
    execution gates do it per job, for a job with no argument rules.

    Value: ``FlagStore.check(spec, args, kwargs) is False`` (today's gate: the TTL check,
    the set lookup, and whether any rule is loaded). Baseline: ``FlagStore.cached(spec.flag)
    is False``, the check the gates made before argument rules existed, measured in the
    same run, interleaved (A B A B ...). Excludes everything else; arq-free, no Redis.
    The snapshot holds 100 enabled flags. Round trips are counted with the store's own
    load counter, which every snapshot query increments. Time is this process's CPU time
    per check (``time.process_time``), not wall time, which on a shared machine also
    counts other processes' turns.
    """
    import asyncio

    spec = _bench_spec()
    args, kwargs = (1, 42), {"region": "us"}

    async def run() -> tuple[list[float], list[float], int]:
        async with _app(urls, flag_ttl=3600.0) as app:
            await app.migrate()
            for i in range(100):
                await app.flags.enable(f"disable_bench_job_{i}")
            await app.flags.refresh()
            loads = app.flags.loads
            check, cached = app.flags.check, app.flags.cached
            n = 1_000_000
            now: list[float] = []
            before: list[float] = []
            for _ in range(REPS):
                now.append(_per_call(lambda: check(spec, args, kwargs) is False, n))
                before.append(_per_call(lambda: cached(spec.flag) is False, n))
            return now, before, app.flags.loads - loads

    per_call, before, round_trips = asyncio.run(run())
    value, baseline = statistics.median(per_call) * 1e6, statistics.median(before) * 1e6
    return {
        "name": "flags.check.warm",
        "value": round(value, 3),
        "unit": "us/check",
        "baseline": {"name": "flags.cached (the check before argument rules)", "value": baseline},
        "ratio": round(value / baseline, 2),
        "target": "<= 1 us median, 0 round trips",
        "met": value <= 1.0 and round_trips == 0,
        "runs": [round(x * 1e6, 3) for x in per_call],
        "baseline_runs": [round(x * 1e6, 3) for x in before],
        "notes": f"{REPS} x 1,000,000 checks each, interleaved; round trips: {round_trips}",
    }


def flags_check_rules_100(urls: dict[str, str]) -> dict[str, Any]:
    """flags.check.rules_100: one warm kill-switch check of a job that has 100 argument
    rules, for a call that none of them matches (every rule is considered).

    The rules: 80 ``customer_id=N``, 10 ``customer_id in (a, b, c)`` and 10 of two
    conditions (``amount>X and region='...'``), as ``FlagStore.disable_where`` stores
    them. Includes the TTL check, the flag lookup and matching the call's arguments
    (found by name and position from the job's signature, compiled once per rule set);
    excludes that one compilation after a load. Measured interleaved with a call that
    the first rule matches (in the notes) and, as the baseline, the same check of a job
    with no rules of its own while these 100 are loaded. CPU time per check, as in
    ``flags.check.warm``.
    """
    import asyncio

    spec, other = _bench_spec(), _bench_spec("bench_other")
    miss_args, miss_kwargs = (1, 5000), {"amount": 10.0, "region": "eu"}
    hit_args: tuple[Any, ...] = (1, 7)

    async def run() -> tuple[list[float], list[float], list[float], int, int]:
        async with _app(urls, flag_ttl=3600.0) as app:
            await app.migrate()
            store = app.flags
            for i in range(80):
                await store.disable_where(spec, customer_id=7 + i, actor="bench")
            for i in range(10):
                await store.disable_where(spec, customer_id=[1000 + 3 * i + k for k in range(3)])
            for i in range(10):
                await store.disable_where(spec, f"amount>{100 * (i + 1)}", region=f"r{i}")
            await store.refresh()
            check = store.check
            assert check(spec, miss_args, miss_kwargs) is False
            assert check(spec, hit_args, {}) not in (False, None)
            loads = store.loads
            n = 200_000
            ruled: list[float] = []
            hits: list[float] = []
            bare: list[float] = []
            for _ in range(REPS):
                ruled.append(_per_call(lambda: check(spec, miss_args, miss_kwargs), n))
                hits.append(_per_call(lambda: check(spec, hit_args, {}), n))
                bare.append(_per_call(lambda: check(other, miss_args, miss_kwargs), n))
            round_trips = store.loads - loads
            return ruled, hits, bare, round_trips, len(await store.rules())

    ruled, hits, bare, round_trips, rules = asyncio.run(run())
    value = statistics.median(ruled) * 1e6
    baseline = statistics.median(bare) * 1e6
    return {
        "name": "flags.check.rules_100",
        "value": round(value, 3),
        "unit": "us/check",
        "baseline": {"name": "a job without rules, same store", "value": round(baseline, 3)},
        "ratio": round(value / baseline, 2),
        "target": "<= 5 us per check with 100 rules, 0 round trips",
        "met": value <= 5.0 and rules == 100 and round_trips == 0,
        "runs": [round(x * 1e6, 3) for x in ruled],
        "baseline_runs": [round(x * 1e6, 3) for x in bare],
        "notes": (
            f"{rules} rules; {REPS} x 200,000 checks of a call no rule matches, interleaved; "
            f"a call the first rule matches: median {statistics.median(hits) * 1e6:.3f} us; "
            f"round trips: {round_trips}"
        ),
    }


def flags_cold_cache_concurrent(urls: dict[str, str]) -> dict[str, Any]:
    """flags.cold_cache.concurrent_1000: 1,000 concurrent enqueues on a cold flag cache.

    Counts the snapshot queries the kill switch makes (the store's load counter)
    while 1,000 ``enqueue()`` calls start at once on an App whose cache is cold.
    """
    import asyncio

    from benchmarks.benchjobs import noop

    async def run() -> list[int]:
        counts = []
        async with _app(urls) as app:
            await app.migrate()
            for _ in range(REPS):
                app.flags._fresh_until = 0.0
                before = app.flags.loads
                await asyncio.gather(*(app.enqueue(noop, i) for i in range(1000)))
                counts.append(app.flags.loads - before)
            await (await app.redis()).flushdb()
        return counts

    counts = asyncio.run(run())
    return {
        "name": "flags.cold_cache.concurrent_1000",
        "value": max(counts),
        "unit": "queries",
        "baseline": None,
        "ratio": None,
        "target": "exactly 1 flag query",
        "met": all(c == 1 for c in counts),
        "runs": counts,
        "notes": f"{REPS} rounds of 1,000 concurrent enqueues, each on a cold cache",
    }


def flags_propagation(urls: dict[str, str]) -> dict[str, Any]:
    """flags.propagation: time from ``flags.enable`` in one process to the first
    rejected enqueue in another (and from ``disable`` to the first accepted one).

    The other process enqueues in a loop (about one enqueue per millisecond)
    with a warm cache and the default TTL; what it sees first is the NOTIFY.
    Measured from just before the enabling call to the child's timestamp of
    the first rejection, over 20 flips; clocks are the same machine's.
    """
    import asyncio
    import time

    async def run() -> list[float]:
        delays: list[float] = []
        async with _app(urls) as app:
            await app.migrate()
            await app.flags.disable("disable_noop")
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks._flip",
                urls["redis"],
                urls["postgres"],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdout is not None
            assert child.stdin is not None
            assert (await child.stdout.readline()).strip() == b"ready"
            for flip in range(20):
                on = flip % 2 == 0
                start = time.time()
                await (app.flags.enable if on else app.flags.disable)("disable_noop")
                state, seen = (await asyncio.wait_for(child.stdout.readline(), 30)).split()
                assert state == (b"on" if on else b"off")
                delays.append(float(seen) - start)
                await asyncio.sleep(0.05)
            child.stdin.close()
            await child.wait()
            await (await app.redis()).flushdb()
        return delays

    delays = asyncio.run(run())
    median_ms, max_ms = statistics.median(delays) * 1000, max(delays) * 1000
    return {
        "name": "flags.propagation",
        "value": round(median_ms, 2),
        "unit": "ms median",
        "baseline": None,
        "ratio": None,
        "target": "< 1 s with notifications (max reported)",
        "met": max_ms < 1000,
        "runs": [round(d * 1000, 2) for d in delays],
        "notes": f"20 flips; max {max_ms:.1f} ms; TTL {2.0}s would be the bound without NOTIFY",
    }


def _enqueue_case(urls: dict[str, str], concurrency: int) -> dict[str, Any]:
    import asyncio
    import time

    from arq.connections import RedisSettings, create_pool

    from benchmarks.benchjobs import noop

    total = 2000 if concurrency == 1 else 5000

    async def timed(enqueue: Any) -> float:
        per_task = total // concurrency

        async def worker() -> None:
            for i in range(per_task):
                await enqueue(i)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)

    async def run() -> tuple[list[float], list[float]]:
        ours, base = [], []
        async with _app(urls, flag_ttl=3600.0) as app:
            await app.migrate()
            await app.flags.enable("disable_some_other_job")
            arq = await create_pool(RedisSettings.from_dsn(urls["redis"]))
            redis = await app.redis()
            await app.enqueue(noop, 0)  # warm: pools open, flags loaded
            await arq.enqueue_job("noop", 0)
            for _ in range(REPS):
                await redis.flushdb()
                ours.append(await timed(lambda i: app.enqueue(noop, i)))
                await redis.flushdb()
                base.append(await timed(lambda i: arq.enqueue_job("noop", i)))
            await redis.flushdb()
            await arq.aclose()
        return ours, base

    ours, base = asyncio.run(run())
    value, baseline = statistics.median(ours), statistics.median(base)
    ratio = value / baseline
    name = "sequential" if concurrency == 1 else f"concurrent_{concurrency}"
    target = 2.0 if concurrency == 1 else 1.5
    return {
        "name": f"enqueue.single.{name}",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": f"arq.enqueue_job.{name}", "value": round(baseline, 1)},
        "ratio": round(ratio, 2),
        "target": f">= 0.95x baseline (kill switch, #3); >= {target}x (fast enqueue, #4)",
        "met": ratio >= 0.95,
        "runs": [round(r, 1) for r in ours],
        "baseline_runs": [round(r, 1) for r in base],
        "notes": (
            f"{total} enqueues per run from {concurrency} task(s), interleaved with arq; "
            "kill switch on with a warm cache (one other flag enabled); includes option "
            "checks, argument binding, the middleware chain and JSON serialization"
        ),
    }


def enqueue_single_sequential(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.single.sequential: ``await enqueue(job, i)`` one after another, vs arq's
    ``ArqRedis.enqueue_job`` (pickle, its defaults) in the same run."""
    return _enqueue_case(urls, 1)


def enqueue_single_concurrent(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.single.concurrent_100: 100 tasks enqueueing at once, vs arq's
    ``enqueue_job`` the same way in the same run."""
    return _enqueue_case(urls, 100)


CASES.update(
    {
        "flags.check.warm": flags_check_warm,
        "flags.check.rules_100": flags_check_rules_100,
        "flags.cold_cache.concurrent_1000": flags_cold_cache_concurrent,
        "flags.propagation": flags_propagation,
        "enqueue.single.sequential": enqueue_single_sequential,
        "enqueue.single.concurrent_100": enqueue_single_concurrent,
    }
)


# -- bulk enqueue ------------------------------------------------------------


def _bulk(urls: dict[str, str], count: int) -> dict[str, Any]:
    data = _child("_bulk", urls["redis"], urls["postgres"], str(count))
    if data["jobs"] != count:
        raise RuntimeError(f"enqueue_stream wrote {data['jobs']} of {count} jobs")
    data["rate"] = count / data["seconds"]
    return data


def _arq_sequential_rate(urls: dict[str, str], count: int = 2000) -> float:
    import asyncio
    import time

    from arq.connections import RedisSettings, create_pool

    async def run() -> float:
        arq = await create_pool(RedisSettings.from_dsn(urls["redis"]))
        await arq.enqueue_job("noop", 0)
        start = time.perf_counter()
        for i in range(count):
            await arq.enqueue_job("noop", i)
        rate = count / (time.perf_counter() - start)
        await arq.flushdb()
        await arq.aclose()
        return rate

    return asyncio.run(run())


def _bulk_case(urls: dict[str, str], count: int, label: str) -> dict[str, Any]:
    _ensure_migrated(urls)
    reps = REPS
    ours, base, rss, rss_before = [], [], [], []
    for _ in range(reps):
        run = _bulk(urls, count)
        ours.append(run["rate"])
        rss.append(run["max_rss_kb"])
        rss_before.append(run["rss_before_kb"])
        base.append(_arq_sequential_rate(urls))
    value, baseline = statistics.median(ours), statistics.median(base)
    ratio = value / baseline
    growth = max(r - b for r, b in zip(rss, rss_before, strict=True)) / 1024
    return {
        "name": f"enqueue.bulk.{label}",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "arq.enqueue_job.sequential", "value": round(baseline, 1)},
        "ratio": round(ratio, 2),
        "target": ">= 50000 jobs/s, >= 10x baseline, flat RSS",
        "met": value >= 50_000 and ratio >= 10,
        "runs": [round(r, 1) for r in ours],
        "baseline_runs": [round(r, 1) for r in base],
        "notes": (
            f"{count:,} jobs per run via enqueue_stream (1,000 per round trip, kill switch on, "
            f"warm cache), {reps} runs, each in a fresh process; peak RSS {max(rss) // 1024} MiB, "
            f"growth during the run at most {growth:.1f} MiB"
        ),
    }


def _ensure_migrated(urls: dict[str, str]) -> None:
    import asyncio

    async def run() -> None:
        async with _app(urls) as app:
            await app.migrate()

    asyncio.run(run())


def enqueue_bulk_20k(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.bulk.20k: ``enqueue_stream`` of 20,000 no-op jobs in one call.

    Includes per-job argument checks, the client chain (kill switch on, warm
    cache), JSON payloads and the batched Lua writes; excludes process start
    and pool warm-up. Baseline: arq's ``enqueue_job`` called sequentially in
    the same run (arq has no bulk API). RSS is the child's max RSS before and
    after the run.
    """
    return _bulk_case(urls, 20_000, "20k")


def enqueue_bulk_1m(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.bulk.1m: the same for 1,000,000 jobs from a generator; RSS must stay flat."""
    return _bulk_case(urls, 1_000_000, "1m")


CASES.update({"enqueue.bulk.20k": enqueue_bulk_20k, "enqueue.bulk.1m": enqueue_bulk_1m})


# -- reconcilers -------------------------------------------------------------


def _seed_rows(urls: dict[str, str], count: int) -> None:
    import asyncio

    async def run() -> None:
        async with _app(urls) as app:
            await app.migrate()
            pool = await app.db()
            await pool.execute(
                "DROP TABLE IF EXISTS bench_rows; "
                "CREATE TABLE bench_rows (id bigint PRIMARY KEY, state text NOT NULL)"
            )
            await pool.execute(
                "INSERT INTO bench_rows SELECT g, 'pending' FROM generate_series(1, $1) g", count
            )
            await pool.execute("VACUUM ANALYZE bench_rows")

    asyncio.run(run())


def _reconcile_runs(urls: dict[str, str], count: int) -> list[dict[str, Any]]:
    _seed_rows(urls, count)
    runs = []
    for _ in range(REPS):
        data = _child("_reconcile", urls["redis"], urls["postgres"])
        if data["first"]["enqueued"] != count:
            raise RuntimeError(f"reconciled {data['first']['enqueued']} of {count} rows")
        runs.append(data)
    return runs


_RECONCILE_CACHE: dict[str, list[dict[str, Any]]] = {}


def _reconcile_data(urls: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if "1m" not in _RECONCILE_CACHE:
        _RECONCILE_CACHE["100k"] = _reconcile_runs(urls, 100_000)
        _RECONCILE_CACHE["1m"] = _reconcile_runs(urls, 1_000_000)
    return _RECONCILE_CACHE["100k"], _RECONCILE_CACHE["1m"]


def _growth_mb(run: dict[str, Any]) -> float:
    return float(run["first"]["max_rss_kb"] - run["idle_rss_kb"]) / 1024


def reconcile_1m_rows(urls: dict[str, str]) -> dict[str, Any]:
    """reconcile.1m_rows: one reconciler run over 1,000,000 pending rows, end to end.

    From the reconciler's start to its end: its query, the server-side cursor
    streaming every row (read-only transaction, 1,000 rows per fetch), stable
    job ids, the client chain (kill switch on) and the batched Lua writes.
    Round trips are EVALSHA calls counted by Redis (INFO commandstats). RSS
    growth is the child's max RSS after the run minus its idle RSS; the same
    is measured at 100,000 rows. Baseline: arq's ``enqueue_job``, sequential.
    """
    small, big = _reconcile_data(urls)
    rates = [r["first"]["rows"] / r["first"]["seconds"] for r in big]
    per_1000 = max(r["first"]["evalsha"] / (r["first"]["rows"] / 1000) for r in big + small)
    growth_big = max(_growth_mb(r) for r in big)
    growth_small = max(_growth_mb(r) for r in small)
    small_rate = statistics.median(r["first"]["rows"] / r["first"]["seconds"] for r in small)
    value = statistics.median(rates)
    baseline = _arq_sequential_rate(urls)
    return {
        "name": "reconcile.1m_rows",
        "value": round(value, 1),
        "unit": "rows/s",
        "baseline": {"name": "arq.enqueue_job.sequential", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 2),
        "target": ">= 40000 rows/s, 1 round trip per 1,000 rows, RSS flat (<= 50 MB)",
        "met": value >= 40_000 and per_1000 <= 1.0 and growth_big <= 50,
        "runs": [round(r, 1) for r in rates],
        "notes": (
            f"{REPS} runs; round trips per 1,000 rows: {per_1000:g}; RSS growth "
            f"{growth_big:.1f} MB at 1,000,000 rows, {growth_small:.1f} MB at 100,000 "
            f"(100,000 rows: {small_rate:,.0f} rows/s)"
        ),
    }


def reconcile_1m_rows_all_queued(urls: dict[str, str]) -> dict[str, Any]:
    """reconcile.1m_rows.all_queued: a second run over the same 1,000,000 rows while every
    job is still queued; it must enqueue nothing (each id is refused by the Lua check)."""
    _, big = _reconcile_data(urls)
    enqueued = [r["second"]["enqueued"] for r in big]
    rates = [r["second"]["rows"] / r["second"]["seconds"] for r in big]
    return {
        "name": "reconcile.1m_rows.all_queued",
        "value": max(enqueued),
        "unit": "jobs enqueued",
        "baseline": None,
        "ratio": None,
        "target": "enqueues nothing",
        "met": max(enqueued) == 0,
        "runs": enqueued,
        "notes": (
            f"{REPS} runs; duplicates found per run: {big[0]['second']['duplicates']:,}; "
            f"median {statistics.median(rates):,.0f} rows/s checked"
        ),
    }


CASES.update(
    {
        "reconcile.1m_rows": reconcile_1m_rows,
        "reconcile.1m_rows.all_queued": reconcile_1m_rows_all_queued,
    }
)


# -- uniqueness and exclusivity ------------------------------------------------


def enqueue_unique_for(urls: dict[str, str]) -> dict[str, Any]:
    """enqueue.unique_for: ``enqueue()`` of a job with ``unique_for`` (distinct arguments, so
    every call takes a lock) vs the same enqueue of a plain job, sequential, same run.

    The uniqueness check and lock are inside the enqueue's single Lua call: the
    extra cost is the key's digest and one SET NX in Redis, no round trip.
    """
    import asyncio
    import time

    from benchmarks.benchjobs import noop, unique_noop

    count, chunk = 2000, 200

    async def elapsed(app: Any, job: Any, offset: int) -> float:
        start = time.perf_counter()
        for i in range(offset, offset + chunk):
            await app.enqueue(job, i)
        return time.perf_counter() - start

    async def run() -> tuple[list[float], list[float]]:
        # The two alternate in chunks of 200 within each run, so that a busy moment on
        # the shared machine slows both alike instead of one of them.
        ours, base = [], []
        async with _app(urls, flag_ttl=3600.0) as app:
            await app.migrate()
            redis = await app.redis()
            await app.enqueue(noop, -1)
            await app.enqueue(unique_noop, -1)  # both scripts loaded
            for rep in range(REPS):
                await redis.flushdb()
                plain = unique = 0.0
                for offset in range(rep * count, (rep + 1) * count, chunk):
                    plain += await elapsed(app, noop, offset)
                    unique += await elapsed(app, unique_noop, offset)
                base.append(count / plain)
                ours.append(count / unique)
            await redis.flushdb()
        return ours, base

    ours, base = asyncio.run(run())
    value, baseline = statistics.median(ours), statistics.median(base)
    return {
        "name": "enqueue.unique_for",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "asyncjobs.enqueue.plain", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 2),
        "target": ">= 0.90x plain enqueue",
        "met": value / baseline >= 0.9,
        "runs": [round(r, 1) for r in ours],
        "baseline_runs": [round(r, 1) for r in base],
        "notes": f"{count} sequential enqueues of each per run, alternating in chunks of {chunk}, "
        f"{REPS} runs",
    }


def worker_exclusive_noop(urls: dict[str, str]) -> dict[str, Any]:
    """worker.exclusive.noop: one worker drains 20,000 no-op jobs that each run under an
    advisory lock of their own (``exclusive=True``, no contention), vs the same worker
    draining plain no-op jobs, same run. Per job: a lock-pool connection, one
    ``pg_try_advisory_lock`` and one ``pg_advisory_unlock`` round trip.
    """
    jobs = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
    ours, base = [], []
    for _ in range(REPS):
        ours.append(_drain("exclusive", urls["redis"], jobs, urls["postgres"])["rate"])
        base.append(_drain("asyncjobs", urls["redis"], jobs, urls["postgres"])["rate"])
    value, baseline = statistics.median(ours), statistics.median(base)
    return {
        "name": "worker.exclusive.noop",
        "value": round(value, 1),
        "unit": "jobs/s",
        "baseline": {"name": "asyncjobs.worker.noop", "value": round(baseline, 1)},
        "ratio": round(value / baseline, 2),
        "target": ">= 0.70x plain worker throughput",
        "met": value / baseline >= 0.7,
        "runs": [round(r, 1) for r in ours],
        "baseline_runs": [round(r, 1) for r in base],
        "notes": f"{jobs} jobs per run, {REPS} runs, interleaved, each in a fresh process",
    }


CASES.update(
    {"enqueue.unique_for": enqueue_unique_for, "worker.exclusive.noop": worker_exclusive_noop}
)

from benchmarks.outbox_cases import OUTBOX_CASES  # noqa: E402 -- they use the helpers above
from benchmarks.scale_cases import SCALE_CASES  # noqa: E402 -- they use the helpers above
from benchmarks.tracing_cases import TRACING_CASES  # noqa: E402 -- they use the helpers above
from benchmarks.web_cases import WEB_CASES  # noqa: E402 -- they use the helpers above
from benchmarks.worker_cases import WORKER_CASES  # noqa: E402 -- they use the helpers above

CASES.update(WORKER_CASES)
CASES.update(TRACING_CASES)
CASES.update(WEB_CASES)
CASES.update(SCALE_CASES)
CASES.update(OUTBOX_CASES)
