"""A job guarded by its row and its reconciler, for the chaos tests
(ASYNCJOBS_IMPORTS=tests.chaosjobs)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncjobs


@asyncjobs.job(max_tries=100, backoff=asyncjobs.Backoff(base=0.2, cap=1))
async def chaos_effect(ctx: dict[str, Any], item_id: int) -> None:
    """Marks its row done once; the effect counts in the row, under the row's lock."""
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn, asyncjobs.row_lock(conn, "items", item_id) as row:
        if row is None or row["done"]:
            return
        await asyncio.sleep(0.02)
        await conn.execute(
            "UPDATE items SET done = true, effects = effects + 1 WHERE id = $1", item_id
        )


@asyncjobs.reconciler(job=chaos_effect, every=1)
async def pending_items(ctx: dict[str, Any]) -> str:
    """Every row not yet done, again each second."""
    return "SELECT id FROM items WHERE NOT done ORDER BY id"
