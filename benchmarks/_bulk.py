"""Child process for enqueue.bulk: time ``enqueue_stream`` of COUNT jobs; report rate and RSS.

Usage: python -m benchmarks._bulk REDIS_URL DATABASE_URL COUNT
Prints one JSON line: {"seconds": ..., "jobs": ..., "max_rss_kb": ..., "rss_before_kb": ...}.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import asyncjobs
from benchmarks.benchjobs import noop


async def main(redis_url: str, database_url: str, count: int) -> None:
    settings = asyncjobs.Settings(redis_url=redis_url, database_url=database_url, log_level="error")
    async with asyncjobs.App(settings) as app:
        await app.enqueue(noop, -1)  # warm: pools open, script loaded, flags cached
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        written = 0
        start = time.perf_counter()
        async for batch in app.enqueue_stream(noop, range(count)):
            written += sum(job is not None for job in batch)
        seconds = time.perf_counter() - start
        await (await app.redis()).flushdb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "jobs": written,
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "rss_before_kb": rss_before,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
