"""The dashboard's benchmark: pages rendered with 100,000 jobs queued."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

RENDERS = 40
QUEUED = 100_000


async def _median_ms(get: Callable[[], Any], renders: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(renders):
        start = time.perf_counter()
        answer = await get()
        runs.append((time.perf_counter() - start) * 1000)
        if answer.status_code != 200 or "unreachable" in answer.text:
            raise RuntimeError(f"the page answered {answer.status_code}")
    return statistics.median(runs), runs


def web_overview_100k(urls: dict[str, str]) -> dict[str, Any]:
    """web.overview.100k: the dashboard's overview and a queue page (page 1,000 of 2,000),
    each rendered through HTTP (httpx on the ASGI app, in process) with 100,000 jobs
    queued, median of 40 renders after a warm-up.

    The overview reads the queues' counts (one Lua call), the workers, 60 per-minute
    counters, the flags and the dead-letter counts; the queue page one ZRANGE with an
    offset and one MGET of 50 payloads. Baseline: ``asyncjobs status``'s Redis read
    alone (``read_redis``), the part the overview shares with it.
    """
    import httpx

    from asyncjobs._status import read_redis
    from asyncjobs.web import dashboard
    from benchmarks import benchjobs
    from benchmarks.cases import _app, _ensure_migrated

    _ensure_migrated(urls)

    async def run() -> dict[str, Any]:
        async with _app(urls) as app:
            redis = await app.redis()
            await redis.flushdb()
            queue = app.settings.queue_name
            await app.enqueue_many(benchjobs.noop, [(n,) for n in range(QUEUED)])
            size = await redis.zcard(queue)
            if size != QUEUED:
                raise RuntimeError(f"{size} of {QUEUED} jobs queued")
            transport = httpx.ASGITransport(app=dashboard(app))
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                page = f"/queues/{queue}?page=1000"
                for path in ("/", page):
                    await client.get(path)  # warm-up: pools, templates, scripts
                overview, overview_runs = await _median_ms(lambda: client.get("/"), RENDERS)
                queue_ms, queue_runs = await _median_ms(lambda: client.get(page), RENDERS)
            base, _ = await _median_ms(lambda: _status_read(app, read_redis), RENDERS)
            await redis.flushdb()
        worst = max(overview, queue_ms)
        return {
            "name": "web.overview.100k",
            "value": round(overview, 2),
            "unit": "ms",
            "baseline": {"name": "read_redis (asyncjobs status)", "value": round(base, 2)},
            "ratio": round(overview / base, 2) if base else None,
            "target": "< 100 ms median (overview and queue page)",
            "met": worst < 100,
            "runs": [round(r, 2) for r in overview_runs],
            "notes": (
                f"{QUEUED:,} jobs queued; overview median {overview:.1f} ms, queue page "
                f"(page 1,000 of 2,000) median {queue_ms:.1f} ms "
                f"(max {max(queue_runs):.1f} ms), {RENDERS} renders each"
            ),
        }

    return asyncio.run(run())


class _Ok:
    status_code = 200
    text = ""


async def _status_read(app: Any, read_redis: Any) -> _Ok:
    await read_redis(app)
    return _Ok()


WEB_CASES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "web.overview.100k": web_overview_100k,
}
