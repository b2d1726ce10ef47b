"""Jobs for the worker-core tests (ASYNCJOBS_IMPORTS=tests.corejobs)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncjobs


@asyncjobs.job
async def guarded_effect(ctx: dict[str, Any], item_id: int, seconds: float) -> None:
    """Marks its row done once, under the row's lock; its effect counts in the row. Its
    work lasts until the Redis key ``go`` is set, at most ``seconds``."""
    await ctx["redis"].rpush("started", item_id)
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn, asyncjobs.row_lock(conn, "items", item_id) as row:
        if row is None or row["done"]:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not await ctx["redis"].exists("go"):
            await asyncio.sleep(0.02)
        await conn.execute(
            "UPDATE items SET done = true, effects = effects + 1 WHERE id = $1", item_id
        )


@asyncjobs.job
async def slow_first_time(ctx: dict[str, Any], n: int) -> None:
    """Its first run of each ``n`` runs until cancelled; later runs return at once."""
    runs = await ctx["redis"].hincrby("slow-runs", str(n), 1)
    await ctx["redis"].rpush("slow-tries", json.dumps([n, ctx["job_try"]]))
    if runs == 1:
        await asyncio.Event().wait()  # never set: only a cancel (or the job timeout) ends it


@asyncjobs.job(queue="billing")
async def billing_job(ctx: dict[str, Any], n: int) -> None:
    """A job on a queue of its own."""
    await ctx["redis"].rpush("billing-runs", n)


@asyncjobs.job
async def stamp(ctx: dict[str, Any], n: int) -> None:
    """Records when its first line ran."""
    now = time.time()
    await ctx["redis"].rpush("stamps", json.dumps([n, now]))


@asyncjobs.job
async def echo(ctx: dict[str, Any], value: Any) -> Any:
    """Returns its argument."""
    return value


@asyncjobs.job(max_tries=2, backoff=asyncjobs.Backoff(base=0.05, cap=0.05))
async def fails_twice(ctx: dict[str, Any], n: int) -> None:
    """Fails on every try: a retry, then a dead letter."""
    raise ValueError(f"bad value {n}")


@asyncjobs.job
async def count_once(ctx: dict[str, Any], n: int) -> None:
    """Counts how often each n ran, in the hash ``counts``."""
    await ctx["redis"].hincrby("counts", str(n), 1)


@asyncjobs.job
async def cancellable(ctx: dict[str, Any], n: int) -> None:
    """Runs until cancelled (or its timeout); records that it started and that it stopped."""
    await ctx["redis"].rpush("cancellable-started", n)
    try:
        await asyncio.Event().wait()  # never set
    finally:
        await ctx["redis"].rpush("cancellable-stopped", n)


@asyncjobs.job
async def report_frozen(ctx: dict[str, Any]) -> None:
    """Records how many objects its process froze out of the collector's sight."""
    import gc

    await ctx["redis"].rpush("frozen", gc.get_freeze_count())
