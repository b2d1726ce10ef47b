"""Child process for worker.drain: fill the queue, then time one worker draining it.

Usage: python -m benchmarks._drain
    {arq|arq-tuned|asyncjobs|asyncjobs-metrics|asyncjobs-throttled|exclusive}
    REDIS_URL COUNT [DB_URL]

``arq`` is arq's Worker with its defaults; ``arq-tuned`` is arq's Worker with
asyncjobs' defaults (max_jobs, poll_delay, keep_result) and no wrapper;
``asyncjobs`` is ``asyncjobs.WorkerSettings``; ``asyncjobs-metrics`` the same with
``ASYNCJOBS_METRICS_PORT`` set (the endpoint served, every job counted and timed; the
JSON line adds ``counted``, the jobs ``asyncjobs_jobs_succeeded_total`` counted);
``asyncjobs-throttled`` the same with ``noop`` throttled to :data:`THROTTLE_RATE`, far
above any drain rate (set in PostgreSQL before the drain, removed after it; the JSON
line adds ``throttle_calls``, the limiter calls the worker made);
``exclusive`` the same running ``exclusive_noop`` (an advisory lock per job, PostgreSQL
at DB_URL). All log as ``arq`` does.
Prints one JSON line: {"seconds": ..., "jobs": ..., "max_rss_kb": ...}; asyncjobs' kinds
add ``cpu_seconds``, the CPU time the worker process used for the drain.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import resource
import sys
import time
from uuid import uuid4

import redis.asyncio as aioredis

THROTTLE_RATE = "1000000/s"


def _compact(data: dict[str, object]) -> str:
    return json.dumps(data, separators=(",", ":"))


async def fill(url: str, count: int, serializer: str, function: str = "noop") -> None:
    """Write COUNT no-op jobs in arq's format with pipelines (not what is measured)."""
    client = aioredis.from_url(url)
    await client.flushdb()
    now = int(time.time() * 1000)
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 5000)):
            job_id = uuid4().hex
            data = {"t": None, "f": function, "a": [n], "k": {}, "et": now}
            # JSON as asyncjobs' own enqueue writes it: compact, the try first, then the name.
            raw = pickle.dumps(data) if serializer == "pickle" else _compact(data).encode()
            pipe.psetex("arq:job:" + job_id, 86_400_000, raw)
            pipe.zadd("arq:queue", {job_id: now})
        await pipe.execute()
    await client.aclose()


async def _throttle(rate: str | None) -> None:
    """Throttle ``noop`` to ``rate`` (None: remove it), on an App of its own."""
    import asyncjobs

    async with asyncjobs.App(asyncjobs.Settings.from_env()) as app:
        if rate is None:
            await app.flags.unthrottle("noop", actor="benchmarks")
        else:
            await app.flags.throttle("noop", rate, actor="benchmarks")


def main() -> None:
    kind, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    function = "exclusive_noop" if kind == "exclusive" else "noop"
    asyncio.run(fill(url, count, "pickle" if kind.startswith("arq") else "json", function))

    import logging.config

    from arq.logs import default_log_config

    # As `arq ...` configures logging (stderr is sent to /dev/null by the parent).
    logging.config.dictConfig(default_log_config(False))
    if kind == "arq-tuned":
        from benchmarks.benchjobs import bare_noop

        worker = Worker(
            functions=[func(bare_noop, name="noop")],
            redis_settings=RedisSettings.from_dsn(url),
            burst=True,
            handle_signals=False,
            max_jobs=int(os.environ.get("ASYNCJOBS_MAX_JOBS", "500")),
            queue_read_limit=int(os.environ.get("ASYNCJOBS_MAX_JOBS", "500")),
            poll_delay=0.05,
            keep_result=0,
            log_results=False,
        )
    elif kind == "arq":
        from benchmarks.benchjobs import bare_noop

        worker = Worker(
            functions=[func(bare_noop, name="noop")],
            redis_settings=RedisSettings.from_dsn(url),
            burst=True,
            handle_signals=False,
        )
    else:
        os.environ["ASYNCJOBS_REDIS_URL"] = url
        os.environ["ASYNCJOBS_IMPORTS"] = "benchmarks.benchjobs"
        if len(sys.argv) > 4:
            os.environ["ASYNCJOBS_DATABASE_URL"] = sys.argv[4]
        if kind == "asyncjobs-metrics":
            from asyncjobs.testing import free_port

            os.environ["ASYNCJOBS_METRICS_PORT"] = str(free_port())
        import asyncjobs
        from asyncjobs._metrics_server import open_server
        from asyncjobs._worker import freeze_startup_objects, import_job_modules
        from asyncjobs.runner import Worker as OwnWorker

        import_job_modules(("benchmarks.benchjobs",))
        app = asyncjobs.get_app()
        # As a worker's start-up does before its loop: import prometheus-client, bind the port.
        metrics = open_server(app) if kind == "asyncjobs-metrics" else None
        own = OwnWorker(app, burst=True, handle_signals=False, metrics=metrics)
        freeze_startup_objects()  # as `arq asyncjobs.WorkerSettings` does before its loop
        if kind == "asyncjobs-throttled":
            asyncio.run(_throttle(THROTTLE_RATE))
        try:
            start, cpu = time.perf_counter(), time.process_time()
            asyncio.run(own.run())
            seconds = time.perf_counter() - start
        finally:
            if kind == "asyncjobs-throttled":
                asyncio.run(_throttle(None))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {"seconds": seconds, "jobs": own.jobs_complete, "max_rss_kb": rss}
        out["cpu_seconds"] = time.process_time() - cpu  # the worker's own CPU, all threads
        if kind == "asyncjobs-throttled":
            assert own._limiter is not None
            out["throttle_calls"] = own._limiter.calls
        if kind == "asyncjobs-metrics":
            from asyncjobs.metrics import registry

            out["counted"] = registry.get_sample_value(
                "asyncjobs_jobs_succeeded_total", {"job": "noop"}
            )
        print(json.dumps(out))
        return
    start = time.perf_counter()
    worker.run()
    seconds = time.perf_counter() - start
    done = worker.jobs_complete
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "jobs": done, "max_rss_kb": rss}))


if __name__ == "__main__":
    main()
