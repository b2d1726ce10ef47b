"""A job that only some workers know (ASYNCJOBS_IMPORTS=tests.workerjobs,tests.latejobs)."""

from __future__ import annotations

from typing import Any

import asyncjobs


@asyncjobs.job
async def late_job(ctx: dict[str, Any], n: int) -> None:
    """Deployed after its first enqueue."""
    await ctx["redis"].rpush("late-runs", n)
