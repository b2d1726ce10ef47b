"""Child process for flags.propagation: enqueue in a loop, report when the kill switch flips.

Usage: python -m benchmarks._flip REDIS_URL DATABASE_URL
Prints "ready", then one line "<on|off> <unix time>" each time the enqueue of
``noop`` changes between rejected (None) and accepted. Stops on stdin EOF.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncjobs
from benchmarks.benchjobs import noop


async def main(redis_url: str, database_url: str) -> None:
    settings = asyncjobs.Settings(redis_url=redis_url, database_url=database_url, log_level="error")
    async with asyncjobs.App(settings) as app:
        rejected = await app.enqueue(noop) is None
        await asyncio.sleep(0.3)  # LISTEN is set up after the first load
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        while not stdin_closed.done():
            now_rejected = await app.enqueue(noop) is None
            if now_rejected != rejected:
                rejected = now_rejected
                print(f"{'on' if rejected else 'off'} {time.time():.6f}", flush=True)
            await asyncio.sleep(0.0005)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
