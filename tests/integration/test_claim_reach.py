"""A claim reaches past every running job of its queue, however many the fleet holds.

As in arq, a running job stays in its queue until it finishes, so a claim walks the queue
from its head and steps over running jobs. Past ``SCAN_MAX`` entries it counts the jobs
the registered workers hold and reaches that far: ready jobs queued behind more running
jobs than ``SCAN_MAX`` are still claimed. The test lowers ``SCAN_MAX`` to 20 and has one
worker hold 30 jobs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import App, Settings
from asyncjobs.runner import Worker
from tests.helpers import eventually

HELD = 30


@asyncjobs.job
async def reach_hold(ctx: dict[str, Any], n: int) -> None:
    """Runs until the Redis key ``release`` is set."""
    await ctx["redis"].rpush("held", n)
    while not await ctx["redis"].exists("release"):
        await asyncio.sleep(0.02)


@asyncjobs.job
async def reach_quick(ctx: dict[str, Any], n: int) -> None:
    await ctx["redis"].rpush("quick", n)


async def _count(redis: aioredis.Redis, key: str, count: int) -> bool:
    return int(await redis.llen(key)) >= count  # type: ignore[misc]


async def test_ready_jobs_behind_more_running_jobs_than_a_claim_scans_are_claimed(
    app: App, settings: Settings, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("asyncjobs.runner.SCAN_MAX", 20)
    await app.migrate()
    for n in range(HELD):
        await app.enqueue(reach_hold, n)
    await asyncio.sleep(0.01)  # the quick jobs score later: behind every held one
    for n in range(5):
        await app.enqueue(reach_quick, n)
    holder = Worker(app, handle_signals=False, max_jobs=HELD, poll_delay=0.05)
    holding = asyncio.create_task(holder.run())
    async with App(settings) as other_app:
        other = Worker(other_app, handle_signals=False, max_jobs=10, poll_delay=0.05)
        try:
            await eventually(
                lambda: _count(redis, "held", HELD), within=30, what="the holder runs 30 jobs"
            )
            assert await redis.llen("quick") == 0  # type: ignore[misc]  # holder is full
            running = asyncio.create_task(other.run())
            try:
                await eventually(
                    lambda: _count(redis, "quick", 5),
                    within=30,
                    what="the second worker claims the 5 ready jobs behind 30 running ones",
                )
                assert await redis.llen("held") == HELD  # type: ignore[misc]  # none twice
            finally:
                await redis.set("release", 1)
                other.stop()
                await asyncio.wait_for(running, 30)
        finally:
            await redis.set("release", 1)
            holder.stop()
            await asyncio.wait_for(holding, 30)
    assert holder.jobs_complete == HELD
    assert other.jobs_complete == 5
