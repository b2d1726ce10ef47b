"""``python -m benchmarks._relay REDIS_URL DATABASE_URL``: an outbox relay alone in a
process (as a worker runs one), until killed; prints ``ready`` once listening."""

from __future__ import annotations

import asyncio
import sys

import asyncjobs
from asyncjobs._outbox import Relay


async def main(redis_url: str, database_url: str) -> None:
    settings = asyncjobs.Settings(redis_url=redis_url, database_url=database_url, log_level="error")
    async with asyncjobs.App(settings) as app:
        relay = Relay(app)
        relay.start()
        await relay.drain()  # pools open before the first measured row
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
