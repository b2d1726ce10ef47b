"""Child process for scale.producers_1_2_4: one producer that enqueues when told to.

Usage: python -m benchmarks._produce REDIS_URL DATABASE_URL CONCURRENCY

Warms up (pools open, the enqueue script loaded, flags cached: one enqueue), prints
``ready``, then reads commands from stdin, one a line:

``go COUNT``: COUNT ``await app.enqueue(noop, i)`` calls from CONCURRENCY tasks at once,
as a web process's handlers would; prints one JSON line ``{"start", "end", "jobs",
"cpu_seconds"}`` (wall-clock start and end, the jobs Redis accepted, the CPU time this
process used). End of input: the process closes its App and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncjobs
from benchmarks.benchjobs import noop


async def produce(app: asyncjobs.App, count: int, concurrency: int) -> dict[str, float]:
    written = 0
    numbers = iter(range(count))

    async def handler() -> None:
        nonlocal written
        for n in numbers:  # the tasks share one iterator: COUNT enqueues in all
            if await app.enqueue(noop, n) is not None:
                written += 1

    start, cpu = time.time(), time.process_time()
    await asyncio.gather(*(handler() for _ in range(concurrency)))
    return {
        "start": start,
        "end": time.time(),
        "jobs": written,
        "cpu_seconds": time.process_time() - cpu,
    }


async def main(redis_url: str, database_url: str, concurrency: int) -> None:
    settings = asyncjobs.Settings(redis_url=redis_url, database_url=database_url, log_level="error")
    loop = asyncio.get_running_loop()
    async with asyncjobs.App(settings) as app:
        await app.enqueue(noop, -1)
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, _, count = line.partition(" ")
            if command != "go":
                raise SystemExit(f"unknown command {line!r}")
            print(json.dumps(await produce(app, int(count), concurrency)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
