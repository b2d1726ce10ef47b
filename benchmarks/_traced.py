"""Child process for the tracing cases: the same work with tracing off and on.

Usage:
  python -m benchmarks._traced enqueue REDIS_URL DB_URL REPS {sdk|sampled|api}
  python -m benchmarks._traced drain REDIS_URL DB_URL COUNT {off|sdk|sampled|api}

Tracing on with ``sdk`` means an OpenTelemetry SDK ``TracerProvider`` (every span
sampled and recorded) with a ``BatchSpanProcessor`` whose exporter discards what it is
given: all of the SDK's cost but the network. ``sampled`` is the same provider with the
sampler a busy production service would set, ``ParentBased(TraceIdRatioBased(0.1))``:
one trace in ten recorded (for ``drain``, one job in ten carries a sampled context).
With ``api`` no provider is configured: the API's default, whose spans are no-ops (the
context is still read and checked).
``enqueue`` times 2,000 sequential ``enqueue()``
calls per run with each of two Apps, tracing off and on, alternating in chunks of 100,
REPS runs; it prints {"off": [jobs/s ...], "on": [...]}. ``drain`` fills the queue with
COUNT no-op jobs (each carrying a trace context when on, as a traced enqueue writes
them) and times one burst worker (``ASYNCJOBS_TRACING`` from the environment) draining
it; it prints {"seconds": ..., "jobs": ...}.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import redis.asyncio as aioredis

SEQUENTIAL = 2000
CHUNK = 100


def _sdk(sampled: bool = False) -> None:
    """Make the SDK's provider, exporting to nowhere in batches, the global one; with
    ``sampled``, one trace in ten recorded."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1))) if sampled else None
    provider = provider or TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)


async def enqueue(
    redis_url: str, database_url: str, reps: int, side: str
) -> dict[str, list[float]]:
    import asyncjobs
    from benchmarks.benchjobs import noop

    if side != "api":
        _sdk(sampled=side == "sampled")
    settings = asyncjobs.Settings(
        redis_url=redis_url, database_url=database_url, log_level="error", flag_ttl=3600.0
    )
    rates: dict[str, list[float]] = {"off": [], "on": []}
    async with asyncjobs.App(settings) as off, asyncjobs.App(settings, tracing=True) as on:
        await off.migrate()
        await off.flags.enable("disable_some_other_job")
        redis = await off.redis()
        for app in (off, on):
            await app.enqueue(noop, 0)  # warm: pools open, script loaded, flags cached
        for _ in range(reps):
            # The two alternate in chunks within each run, so that a busy moment on the
            # shared machine slows both alike instead of one of them.
            await redis.flushdb()
            spent = {"off": 0.0, "on": 0.0}
            for offset in range(0, SEQUENTIAL, CHUNK):
                for label, app in (("off", off), ("on", on)):
                    start = time.perf_counter()
                    for i in range(offset, offset + CHUNK):
                        await app.enqueue(noop, i)
                    spent[label] += time.perf_counter() - start
            for label, seconds in spent.items():
                rates[label].append(SEQUENTIAL / seconds)
        await redis.flushdb()
    return rates


async def fill(url: str, count: int, traced: bool, every: int = 1) -> None:
    """COUNT no-op jobs in arq's format, with pipelines (not what is measured); when
    ``traced``, each carries a trace context, sampled in one job of ``every``."""
    client = aioredis.from_url(url)
    await client.flushdb()
    now = int(time.time() * 1000)
    trace_id = f"{random.getrandbits(128):032x}"
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 5000)):
            job_id = uuid4().hex
            data: dict[str, Any] = {"t": None, "f": "noop", "a": [n], "k": {}, "et": now}
            if traced:
                flags = "00" if n % every else "01"
                data["trace"] = {"traceparent": f"00-{trace_id}-{job_id[:16]}-{flags}"}
            pipe.psetex("arq:job:" + job_id, 86_400_000, json.dumps(data).encode())
            pipe.zadd("arq:queue", {job_id: now})
        await pipe.execute()
    await client.aclose()


def drain(redis_url: str, database_url: str, count: int, side: str) -> dict[str, Any]:
    traced = side != "off"
    asyncio.run(fill(redis_url, count, traced, every=10 if side == "sampled" else 1))
    os.environ["ASYNCJOBS_REDIS_URL"] = redis_url
    os.environ["ASYNCJOBS_DATABASE_URL"] = database_url
    os.environ["ASYNCJOBS_IMPORTS"] = "benchmarks.benchjobs"
    os.environ["ASYNCJOBS_TRACING"] = "true" if traced else "false"
    if side in ("sdk", "sampled"):
        _sdk(sampled=side == "sampled")
    import asyncjobs
    from asyncjobs._worker import freeze_startup_objects, import_job_modules
    from asyncjobs.runner import Worker

    import_job_modules(("benchmarks.benchjobs",))
    worker = Worker(asyncjobs.get_app(), burst=True, handle_signals=False)
    freeze_startup_objects()  # as `arq asyncjobs.WorkerSettings` does before its loop
    start = time.perf_counter()
    asyncio.run(worker.run())
    return {"seconds": time.perf_counter() - start, "jobs": worker.jobs_complete}


def main(argv: list[str]) -> None:
    if argv[0] == "enqueue":
        result: dict[str, Any] = asyncio.run(enqueue(argv[1], argv[2], int(argv[3]), argv[4]))
    else:
        result = drain(argv[1], argv[2], int(argv[3]), argv[4])
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
