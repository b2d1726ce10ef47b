"""Jobs for the worker-core tests (ASYNCJOBS_IMPORTS=tests.corejobs)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncjobs


@asyncjobs.job
async def guarded_effect(ctx: dict[str, Any], item_id: int, seconds: float) -> None:
    """Marks its row done once, under the row's lock; its effect counts in the row."""
    await ctx["redis"].rpush("started", item_id)
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn, asyncjobs.row_lock(conn, "items", item_id) as row:
        if row is None or row["done"]:
            return
        await asyncio.sleep(seconds)
        await conn.execute(
            "UPDATE items SET done = true, effects = effects + 1 WHERE id = $1", item_id
        )


@asyncjobs.job
async def slow_first_time(ctx: dict[str, Any], n: int) -> None:
    """Its first run of each ``n`` sleeps for an hour; later runs return at once."""
    runs = await ctx["redis"].hincrby("slow-runs", str(n), 1)
    await ctx["redis"].rpush("slow-tries", json.dumps([n, ctx["job_try"]]))
    if runs == 1:
        await asyncio.sleep(3600)


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
    """Runs for an hour unless cancelled; records that it started and that it stopped."""
    await ctx["redis"].rpush("cancellable-started", n)
    try:
        await asyncio.sleep(3600)
    finally:
        await ctx["redis"].rpush("cancellable-stopped", n)
