"""Child process for reconcile.*: run a reconciler over the rows of ``bench_rows``.

Usage: python -m benchmarks._reconcile REDIS_URL DATABASE_URL
Runs the reconciler twice (the second time every job is still queued) and prints
one JSON line with both runs' counts, seconds, EVALSHA calls and max RSS.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

import asyncjobs
from asyncjobs._reconcilers import Reconciler, schedule_from_every
from benchmarks.benchjobs import noop


async def pending(ctx: dict[str, Any]) -> str:
    return "SELECT id FROM bench_rows WHERE state = 'pending'"


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def main(redis_url: str, database_url: str) -> None:
    from datetime import timedelta

    settings = asyncjobs.Settings(redis_url=redis_url, database_url=database_url, log_level="error")
    rec = Reconciler(
        name="bench_reconciler",
        job=noop,
        query=pending,
        schedule=schedule_from_every(timedelta(minutes=1)),
        period_s=60,
    )
    rec.spec = noop.__asyncjobs_job__  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    async with asyncjobs.App(settings) as app:
        redis = await app.redis()
        await app.enqueue(noop, -1)  # warm: pools, script, flags
        await redis.flushdb()
        out["idle_rss_kb"] = _rss_kb()
        for label in ("first", "second"):
            calls = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
            start = time.perf_counter()
            result = await rec.run(app)
            seconds = time.perf_counter() - start
            after = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
            out[label] = {
                "rows": result.rows,
                "enqueued": result.enqueued,
                "duplicates": result.duplicates,
                "seconds": seconds,
                "evalsha": after - calls,
                "max_rss_kb": _rss_kb(),
            }
        await redis.flushdb()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
