"""Child process for worker.drain: fill the queue, then time one worker draining it.

Usage: python -m benchmarks._drain {arq|arq-tuned|asyncjobs|exclusive} REDIS_URL COUNT [DB_URL]

``arq`` is arq's Worker with its defaults; ``arq-tuned`` is arq's Worker with
asyncjobs' defaults (max_jobs, poll_delay, keep_result) and no wrapper;
``asyncjobs`` is ``asyncjobs.WorkerSettings``; ``exclusive`` the same running
``exclusive_noop`` (an advisory lock per job, PostgreSQL at DB_URL). All log as
``arq`` does.
Prints one JSON line: {"seconds": ..., "jobs": ..., "max_rss_kb": ...}.
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
            raw = pickle.dumps(data) if serializer == "pickle" else json.dumps(data).encode()
            pipe.psetex("arq:job:" + job_id, 86_400_000, raw)
            pipe.zadd("arq:queue", {job_id: now})
        await pipe.execute()
    await client.aclose()


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
        import asyncjobs
        from asyncjobs._worker import import_job_modules
        from asyncjobs.runner import Worker as OwnWorker

        import_job_modules(("benchmarks.benchjobs",))
        own = OwnWorker(asyncjobs.get_app(), burst=True, handle_signals=False)
        start = time.perf_counter()
        asyncio.run(own.run())
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"seconds": seconds, "jobs": own.jobs_complete, "max_rss_kb": rss}))
        return
    start = time.perf_counter()
    worker.run()
    seconds = time.perf_counter() - start
    done = worker.jobs_complete
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "jobs": done, "max_rss_kb": rss}))


if __name__ == "__main__":
    main()
