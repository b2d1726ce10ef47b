"""An outbox relay alone in a process (``python -m tests.outboxrelay``), for the crash test.

With ``OUTBOX_TEST_PAUSE=1`` it stops for good between a batch's Redis write and the
delete of its rows, after printing the JSON line ``{"event": "relay.paused", ...}``:
the point where a relay that dies leaves rows whose jobs are already in Redis.
"""

from __future__ import annotations

import asyncio
import json
import os

import asyncjobs
from asyncjobs._outbox import Relay


async def _stay_here(job_ids: list[str]) -> None:
    print(json.dumps({"event": "relay.paused", "job_ids": job_ids}), flush=True)
    await asyncio.Event().wait()


async def main() -> None:
    pause = os.environ.get("OUTBOX_TEST_PAUSE") == "1"
    async with asyncjobs.App() as app:
        relay = Relay(app, after_write=_stay_here if pause else None)
        print(json.dumps({"event": "relay.started"}), flush=True)
        await relay.run()


if __name__ == "__main__":
    asyncio.run(main())
