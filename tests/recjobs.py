"""A provisioning-style job and its reconciler (ASYNCJOBS_IMPORTS=tests.recjobs).

``create_database`` follows the pattern: lock the row, exit quickly if it is no
longer pending, do the work (record an effect), mark it ready. Every start is
recorded in ``attempts`` and every effect in ``effects``, so a test can see that
duplicates ran and did no harm.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

import asyncjobs

DELAY = float(os.environ.get("REC_DELAY", "0.02"))
EVERY = timedelta(seconds=int(os.environ.get("REC_EVERY", "2")))

SCHEMA = """
CREATE TABLE IF NOT EXISTS databases (id serial PRIMARY KEY, state text NOT NULL DEFAULT 'pending');
CREATE TABLE IF NOT EXISTS effects (database_id int NOT NULL, at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS attempts (database_id int NOT NULL, at timestamptz DEFAULT now());
"""


@asyncjobs.job
async def create_database(ctx: dict[str, Any], database_id: int) -> None:
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO attempts (database_id) VALUES ($1)", database_id)
        async with asyncjobs.row_lock(conn, "databases", database_id) as row:
            if row is None or row["state"] != "pending":
                return  # exit quickly: done already
            await asyncio.sleep(DELAY)  # the work
            await conn.execute("INSERT INTO effects (database_id) VALUES ($1)", database_id)
            await conn.execute("UPDATE databases SET state = 'ready' WHERE id = $1", database_id)


@asyncjobs.reconciler(job=create_database, every=EVERY)
async def pending_rows(ctx: dict[str, Any]) -> str:
    if "redis" in ctx:  # in a worker: record which period this run belongs to
        await ctx["redis"].rpush("reconciler_runs", ctx["job_id"])
    return "SELECT id FROM databases WHERE state = 'pending' ORDER BY id"
