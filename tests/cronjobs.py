"""Scheduled jobs for the scheduled-job tests (ASYNCJOBS_IMPORTS=tests.cronjobs).

Each run writes a row to ``cron_runs`` (the job, its job id, which names the period,
and its try), so a test counts the runs of each period in PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncjobs

SCHEMA = """
CREATE TABLE IF NOT EXISTS cron_runs (
    job text NOT NULL, job_id text NOT NULL, job_try int NOT NULL, at timestamptz DEFAULT now()
);
"""


async def _record(ctx: dict[str, Any], job: str) -> None:
    pool = await ctx["asyncjobs"].db()
    await pool.execute(
        "INSERT INTO cron_runs (job, job_id, job_try) VALUES ($1, $2, $3)",
        job,
        ctx["job_id"],
        ctx["job_try"],
    )


@asyncjobs.job(every=timedelta(seconds=1))
async def every_second(ctx: dict[str, Any]) -> None:
    await _record(ctx, "every_second")


@asyncjobs.job(cron=asyncjobs.Cron(second=set(range(0, 60, 2))), queue="cron")
async def even_seconds(ctx: dict[str, Any]) -> None:
    """On a queue of its own: a run is written to the job's queue."""
    await _record(ctx, "even_seconds")


@asyncjobs.job(every=2, max_tries=2, backoff=asyncjobs.Backoff(base=0.05, cap=0.05))
async def flaky_every_two(ctx: dict[str, Any]) -> None:
    """Fails its first try of each period; the retry succeeds."""
    await _record(ctx, "flaky_every_two")
    if ctx["job_try"] == 1:
        raise RuntimeError("first try of the period fails")
