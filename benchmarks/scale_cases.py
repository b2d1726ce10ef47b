"""Scaling cases: 1, 2 and 4 worker processes, and 1, 2 and 4 producer processes, on one Redis.

scale.workers_1_2_4 and scale.producers_1_2_4 report, for each process count, the
jobs/s, the Redis server's CPU per 1,000 jobs, the Redis commands per job and where
the CPU went (Redis, the measured processes, everything else on the machine), so a
figure says what limited it. docs/scaling.md turns them into a capacity model.

How the Redis side is read: ``INFO`` before and after each round. CPU is
``used_cpu_sys + used_cpu_user`` (every thread of the server). Commands are
``total_commands_processed``, which counts each command a Lua script runs as well
as the script call itself; ``EVALSHA`` calls (one per script round trip) are
reported apart, from ``INFO commandstats``. The bench's own commands during a
round (its INFO, the release, its polls) are subtracted, and so is the idle
traffic of the processes that wait for another round (measured for two
heartbeats beforehand, per process). CPU of processes is ``utime + stime`` from
``/proc/<pid>/stat``; the machine's is ``/proc/stat``. Linux only.

All process counts run interleaved in the same run (1, 2, 4, then 4, 2, 1, ...),
against the one Redis the run started; medians of BENCH_REPS rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from benchmarks._scale_meter import CPUS, Round, Series, Usage, limit, snapshot
from benchmarks.cases import REPS, _app, _ensure_migrated
from benchmarks.worker_cases import ROOT, _env, _registered, _stop

COUNTS = (1, 2, 4)
"""The process counts each case compares."""
_QUEUE = "bench:scale:{}"
_OWN_PER_ROUND = 4
"""Commands the bench sends in a workers round besides its polls: INFO (before; the INFO
after is not in its own count), RENAME, LPUSH and PEXPIRE of the wake-up token."""


def _report(
    name: str,
    what: str,
    series: dict[int, Series],
    target_note: str,
    extra_notes: list[str],
) -> dict[str, Any]:
    """The result dict, with a table per process count printed and kept in ``scaling``."""
    medians = {n: s.median() for n, s in series.items()}
    print(
        f"  {what:>9} {'jobs/s':>9} {'x1':>6} {'Redis ms':>9} {'cmds':>6} {'evalsha':>8} "
        f"{'proc ms':>8} {'Redis':>6} {'procs':>6} {'other':>6} {'machine':>8}"
    )
    print(
        f"  {'':>9} {'':>9} {'':>6} {'/1000 j':>9} {'/job':>6} {'/job':>8} {'/1000 j':>8} "
        f"{'cores':>6} {'cores':>6} {'cores':>6} {'cores':>8}"
    )
    one = medians[1]["jobs_per_s"]
    for n, m in medians.items():
        print(
            f"  {n:>9} {m['jobs_per_s']:>9,.0f} {m['jobs_per_s'] / one:>5.2f}x "
            f"{m['redis_cpu_ms_per_1000']:>9.1f} {m['commands_per_job']:>6.2f} "
            f"{m['evalsha_per_job']:>8.3f} {m['process_cpu_ms_per_1000']:>8.0f} "
            f"{m['redis_cores']:>6.2f} {m['process_cores']:>6.2f} {m['other_cores']:>6.2f} "
            f"{m['machine_cores']:>8.2f}   limit: {limit(m)}"
        )
    two = medians[2]["jobs_per_s"]
    ratio = two / one
    redis_core = {n: 1_000_000 / m["redis_cpu_ms_per_1000"] for n, m in medians.items()}
    summary = "; ".join(
        f"{n} {what}: {m['jobs_per_s']:,.0f} jobs/s ({m['jobs_per_s'] / one:.2f}x), Redis "
        f"{m['redis_cpu_ms_per_1000']:.1f} ms CPU/1,000 jobs (one core: "
        f"{redis_core[n]:,.0f} jobs/s), {m['commands_per_job']:.2f} commands/job "
        f"({m['evalsha_per_job']:.3f} EVALSHA), cores Redis/{what}/other "
        f"{m['redis_cores']:.2f}/{m['process_cores']:.2f}/{m['other_cores']:.2f} "
        f"of {CPUS}, limit: {limit(m)}"
        for n, m in medians.items()
    )
    return {
        "name": name,
        "value": round(two, 1),
        "unit": "jobs/s",
        "baseline": {"name": f"{name} with 1 process", "value": round(one, 1)},
        "ratio": round(ratio, 2),
        "target": ">= 1.6x with 2 processes where Redis is not the limit",
        "met": ratio >= 1.6,
        "runs": [round(r.rate, 1) for r in series[2].rounds],
        "baseline_runs": [round(r.rate, 1) for r in series[1].rounds],
        "scaling": {
            str(n): {
                **{k: round(v, 3) for k, v in m.items()},
                "redis_core_jobs_per_s": round(redis_core[n], 1),
                "limit": limit(m),
                "commands": series[n].commands_per_job(),
                "runs": [round(r.rate, 1) for r in series[n].rounds],
            }
            for n, m in medians.items()
        },
        "notes": " ".join([summary + ".", target_note, *filter(None, extra_notes)]),
    }


def _cores_note(processes: str) -> str:
    return (
        f"This machine has {CPUS} cores: with 4 {processes}, Redis and the bench there are more "
        f"busy processes than cores, so the 4-process figure measures sharing {CPUS} cores, not "
        "4 processes' worth of CPU."
    )


def _order(rep: int) -> tuple[int, ...]:
    return COUNTS if rep % 2 == 0 else tuple(reversed(COUNTS))


# -- scale.workers_1_2_4 ---------------------------------------------------------


def _start_worker(urls: dict[str, str], queue: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "arq", "asyncjobs.WorkerSettings"],
        env=_env(urls, ASYNCJOBS_QUEUES=queue),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _drain_round(app: Any, redis: Any, queue: str, jobs: int, pids: list[int]) -> Round:
    """Fill a staging queue, hand it to ``queue``'s workers at once, time them emptying it."""
    from asyncjobs._claim import wake_key
    from benchmarks.benchjobs import noop

    staging = queue + ":staging"
    written = 0
    async for batch in app.enqueue_stream(noop, range(jobs), _queue_name=staging):
        written += sum(job is not None for job in batch)
    if written != jobs:
        raise RuntimeError(f"filled {written} of {jobs} jobs")
    await redis.delete(wake_key(staging))
    before = await snapshot(redis, pids)
    # The payload does not name its queue: renaming the sorted set moves every job at
    # once, with the scores (due times) the enqueue gave them. Then the token that wakes
    # an idle worker, as an enqueue pushes it.
    pipe = redis.pipeline(transaction=False)
    pipe.rename(staging, queue)
    pipe.lpush(wake_key(queue), "1")
    pipe.pexpire(wake_key(queue), 60_000)
    await pipe.execute()
    polls = 0
    deadline = time.monotonic() + 300
    while True:
        polls += 1
        if not await redis.zcard(queue):  # a job leaves its queue when it has finished
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue}: not drained within 300 s")
        await asyncio.sleep(0.005)
    usage = Usage.between(before, await snapshot(redis, pids))
    usage.commands -= _OWN_PER_ROUND + polls
    for command, count in (("info", 1), ("rename", 1), ("lpush", 1), ("pexpire", 1)):
        usage.calls[command] = usage.calls.get(command, 0) - count
    usage.calls["zcard"] = usage.calls.get("zcard", 0) - polls
    return Round(jobs, usage)


async def _idle(redis: Any, pids: list[int], seconds: float = 4.0) -> Usage:
    """What the workers cost Redis while they all wait for work, over ``seconds`` (two
    heartbeats: each worker's beat and recovery check fall in it the same number of times)."""
    before = await snapshot(redis, pids)
    await asyncio.sleep(seconds)
    usage = Usage.between(before, await snapshot(redis, pids))
    usage.commands -= 1  # the INFO before
    usage.calls["info"] = usage.calls.get("info", 0) - 1
    return usage


async def _pg_connections(pool: Any) -> int:
    """Client connections to the bench's database, besides the one asking."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return count


def _worker_log(log: Path) -> tuple[int, int]:
    """From a worker's JSON log: jobs_complete (its ``worker.stopped`` event) and how often
    it found itself presumed dead (``worker.presumed_dead``: other workers took its jobs)."""
    completed, presumed_dead = None, 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "worker.stopped":
            completed = int(event["jobs_complete"])
        elif event.get("event") == "worker.presumed_dead":
            presumed_dead += 1
    if completed is None:
        raise RuntimeError(f"{log}: no worker.stopped event")
    return completed, presumed_dead


def scale_workers(urls: dict[str, str]) -> dict[str, Any]:
    """scale.workers_1_2_4: 1, 2 and 4 worker processes (``arq asyncjobs.WorkerSettings``,
    default settings, logging at info as JSON to a file) drain BENCH_SCALE_JOBS (default
    10,000) queued no-op jobs, against one Redis.

    Seven workers run for the whole case, one group per process count, each group on a
    queue of its own, so the counts interleave without restarts. A round enqueues the
    jobs (``enqueue_stream``) into a staging queue that no worker reads, then renames it
    to the group's queue and pushes the wake-up token: the figure runs from that moment
    until the queue is empty (every job finished and written back). Includes claiming,
    the execution wrapper (kill switch on), the job.succeeded log line and the batched
    finish; excludes the enqueue (see scale.producers_1_2_4) and process start. Each
    group first drains 500 jobs per worker unmeasured (pools, scripts, flags). What each
    worker completed (its worker.stopped event) is added up per group: fewer than were
    enqueued fails the case; more are runs beyond one per job, reported with the
    ``worker.presumed_dead`` events that explain them (a worker starved of CPU for three
    heartbeats on an overloaded machine). The logs are deleted unless that happened.
    """
    _ensure_migrated(urls)
    return asyncio.run(_scale_workers(urls))


async def _scale_workers(urls: dict[str, str]) -> dict[str, Any]:
    jobs = int(os.environ.get("BENCH_SCALE_JOBS", "10000"))
    warm = 500  # per worker of the group: each loads its flags, opens its pools
    logs = Path(tempfile.mkdtemp(prefix="asyncjobs-scale-"))
    series = {n: Series(n) for n in COUNTS}
    procs: dict[int, list[subprocess.Popen[bytes]]] = {}
    files: dict[int, list[Path]] = {}
    async with _app(urls) as app:
        redis = await app.redis()
        await redis.flushdb()
        pool = await app.db()
        await app.flags.refresh()
        await asyncio.sleep(0.2)  # the flag listener connects in the background
        without = await _pg_connections(pool)
        try:
            for n in COUNTS:
                files[n] = [logs / f"workers{n}-{i}.log" for i in range(n)]
                procs[n] = []
                for path in files[n]:
                    with path.open("wb") as log:
                        procs[n].append(_start_worker(urls, _QUEUE.format(n), log))
            everyone = [p.pid for ps in procs.values() for p in ps]
            await _registered(redis, len(everyone))
            for n in COUNTS:
                await _drain_round(app, redis, _QUEUE.format(n), warm * n, [])
            idle = await _idle(redis, everyone)
            for rep in range(REPS):
                for n in _order(rep):
                    pids = [p.pid for p in procs[n]]
                    measured = await _drain_round(app, redis, _QUEUE.format(n), jobs, pids)
                    # Less the idle traffic of the other groups' workers meanwhile.
                    share = (len(everyone) - n) / len(everyone) * measured.usage.seconds
                    measured.usage.less(idle, share / idle.seconds)
                    series[n].rounds.append(measured)
            held = await _pg_connections(pool) - without  # after every worker ran jobs
        finally:
            _stop([p for ps in procs.values() for p in ps])
        await redis.flushdb()
    read = {n: [_worker_log(path) for path in files[n]] for n in COUNTS}
    counts = {n: [completed for completed, _ in read[n]] for n in COUNTS}
    extra: dict[int, int] = {}
    for n in COUNTS:
        expected = warm * n + REPS * jobs
        if sum(counts[n]) < expected:
            raise RuntimeError(f"{n} worker(s) completed {sum(counts[n])} of {expected}")
        extra[n] = sum(counts[n]) - expected
    presumed_dead = sum(dead for n in COUNTS for _, dead in read[n])
    if presumed_dead or any(extra.values()):
        runs = (
            f"a worker starved of CPU for 3 heartbeats was presumed dead {presumed_dead} "
            "time(s) and its jobs handed to others, so some jobs ran twice (runs beyond one "
            "per job: " + ", ".join(f"{n} workers: {extra[n]}" for n in COUNTS) + "); the "
            "machine was overloaded"
        )
        kept = f"Worker logs kept: {logs}."
    else:
        runs = "every job ran exactly once"
        kept = ""
        shutil.rmtree(logs, ignore_errors=True)
    idle_per_worker = idle.commands / idle.seconds / len(everyone)
    result = _report(
        "scale.workers_1_2_4",
        "workers",
        series,
        _cores_note("workers"),
        [
            f"{jobs:,} jobs per round, {REPS} rounds per count, interleaved; {runs} (jobs per "
            "worker: "
            + ", ".join(f"{n}: {counts[n]}" for n in COUNTS)
            + f"). Idle, a worker sends {idle_per_worker:.0f} commands/s (polls, heartbeats), "
            "taken out of the other groups' share.",
            f"PostgreSQL: the {len(everyone)} workers held {held} connections "
            f"({held / len(everyone):g} each: the App's pool at its minimum and the flag "
            "listener; exclusive jobs add the lock pool).",
            kept,
        ],
    )
    result["duplicates"] = {str(n): extra[n] for n in COUNTS}
    result["presumed_dead"] = presumed_dead
    result["postgres_connections"] = {"workers": len(everyone), "held": held}
    return result


# -- scale.producers_1_2_4 -------------------------------------------------------


def scale_producers(urls: dict[str, str]) -> dict[str, Any]:
    """scale.producers_1_2_4: 1, 2 and 4 producer processes each make BENCH_SCALE_ENQUEUES
    (default 5,000) ``await app.enqueue(noop, i)`` calls from 100 concurrent tasks (a web
    process's handlers), against one Redis; no worker runs.

    Four producers (benchmarks._produce) start once and warm up (pools open, the script
    loaded, flags cached); a round tells the first 1, 2 or 4 of them to go at once. The
    figure is every producer's jobs over the span from the first start to the last end.
    Includes option checks, the client chain with the kill switch (warm cache), JSON
    payloads and the one-EVALSHA write; excludes process start. The queue is emptied
    between rounds.
    """
    _ensure_migrated(urls)
    return asyncio.run(_scale_producers(urls))


async def _ask(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 300)
    if not line:
        raise RuntimeError(f"producer {proc.pid} exited (code {await proc.wait()})")
    return line.decode().strip()


async def _scale_producers(urls: dict[str, str]) -> dict[str, Any]:
    each = int(os.environ.get("BENCH_SCALE_ENQUEUES", "5000"))
    concurrency = 100
    series = {n: Series(n) for n in COUNTS}
    producers: list[asyncio.subprocess.Process] = []
    async with _app(urls) as app:
        redis = await app.redis()
        await redis.flushdb()
        try:
            for _ in range(max(COUNTS)):
                producers.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "benchmarks._produce",
                        urls["redis"],
                        urls["postgres"],
                        str(concurrency),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)},
                    )
                )
            for proc in producers:
                if await _ask(proc) != "ready":
                    raise RuntimeError(f"producer {proc.pid} did not start")
            for rep in range(REPS):
                for n in _order(rep):
                    await redis.flushdb()
                    group = producers[:n]
                    before = await snapshot(redis, [p.pid for p in group])
                    for proc in group:
                        assert proc.stdin is not None
                        proc.stdin.write(f"go {each}\n".encode())
                        await proc.stdin.drain()
                    replies = [json.loads(await _ask(proc)) for proc in group]
                    usage = Usage.between(before, await snapshot(redis, [p.pid for p in group]))
                    usage.commands -= 1  # the INFO before
                    usage.calls["info"] = usage.calls.get("info", 0) - 1
                    # The span the producers ran, from their own clocks (not the replies').
                    first, last = min(r["start"] for r in replies), max(r["end"] for r in replies)
                    usage.seconds = last - first
                    written = sum(r["jobs"] for r in replies)
                    if written != n * each:
                        raise RuntimeError(f"{n} producer(s) wrote {written} of {n * each} jobs")
                    series[n].rounds.append(Round(written, usage))
        finally:
            for proc in producers:
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in producers:
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        await redis.flushdb()
    return _report(
        "scale.producers_1_2_4",
        "producers",
        series,
        _cores_note("producers"),
        [
            f"{each:,} enqueues per producer per round from {concurrency} tasks each, {REPS} "
            "rounds per count, interleaved. CPU shares use the span of the round as the "
            "producers timed it; the Redis and process CPU include the moments around it.",
        ],
    )


SCALE_CASES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "scale.workers_1_2_4": scale_workers,
    "scale.producers_1_2_4": scale_producers,
}


def markdown(result: dict[str, Any]) -> str:
    """One scale case's figures as the Markdown table docs/scaling.md keeps."""
    what = "workers" if "workers" in result["name"] else "producers"
    lines = [
        f"| {what} | jobs/s | x1 | Redis CPU ms / 1,000 jobs | one Redis core, jobs/s | "
        f"commands / job | EVALSHA / job | {what} CPU ms / 1,000 jobs | "
        f"cores: Redis / {what} / other | limit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    one = result["scaling"]["1"]["jobs_per_s"]
    for n, m in result["scaling"].items():
        lines.append(
            f"| {n} | {m['jobs_per_s']:,.0f} | {m['jobs_per_s'] / one:.2f}x | "
            f"{m['redis_cpu_ms_per_1000']:.1f} | {m['redis_core_jobs_per_s']:,.0f} | "
            f"{m['commands_per_job']:.2f} | {m['evalsha_per_job']:.3f} | "
            f"{m['process_cpu_ms_per_1000']:.0f} | {m['redis_cores']:.2f} / "
            f"{m['process_cores']:.2f} / {m['other_cores']:.2f} | {m['limit']} |"
        )
    return "\n".join(lines)


def model(workers: dict[str, Any], producers: dict[str, Any]) -> str:
    """The capacity model's figures (docs/scaling.md) from the 1-process rows of both cases."""
    w, p = workers["scaling"]["1"], producers["scaling"]["1"]
    drain, enqueue = w["redis_cpu_ms_per_1000"], p["redis_cpu_ms_per_1000"]
    life = drain + enqueue
    worker, producer = w["process_cpu_ms_per_1000"], p["process_cpu_ms_per_1000"]
    return "\n".join(
        [
            f"Redis CPU ms / 1,000 jobs: enqueue {enqueue:.1f}, claim + finish {drain:.1f}, "
            f"a job's life {life:.1f}",
            f"jobs/s one Redis core: enqueue {1e6 / enqueue:,.0f}, claim + finish "
            f"{1e6 / drain:,.0f}, a job's life {1e6 / life:,.0f} (70 %: {0.7e6 / life:,.0f})",
            f"per process core: a worker {1e6 / worker:,.0f} no-op jobs/s ({worker:.0f} ms / "
            f"1,000), a producer {1e6 / producer:,.0f} enqueues/s ({producer:.0f} ms / 1,000)",
            f"2 processes on 2 cores beside Redis, at most: workers "
            f"{2 * worker / (worker + drain):.2f}x, producers "
            f"{2 * producer / (producer + enqueue):.2f}x one process",
            f"a 500-job claim + finish holds Redis about {drain / 2:.0f} ms in all",
        ]
    )


if __name__ == "__main__":
    # python -m benchmarks.scale_cases [bench-results.json]: the tables for docs/scaling.md.
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench-results.json"
    cases = json.loads(path.read_text())["cases"]
    found = {c["name"]: c for c in cases if c["name"] in SCALE_CASES}
    for name, case in found.items():
        print(f"{name}:\n\n{markdown(case)}\n")
    if len(found) == len(SCALE_CASES):
        print(model(found["scale.workers_1_2_4"], found["scale.producers_1_2_4"]))
