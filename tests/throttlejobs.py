"""Jobs for the throttle and pause tests (ASYNCJOBS_IMPORTS=tests.throttlejobs).

Each records when its first line ran and which try it was, in a Redis list.
"""

from __future__ import annotations

import json
import time
from typing import Any

import asyncjobs


@asyncjobs.job
async def throttled_stamp(ctx: dict[str, Any], n: int) -> None:
    """Records (n, when it started, its try) in the list ``starts``."""
    entry = {"n": n, "at": time.time(), "try": ctx["job_try"], "job_id": ctx["job_id"]}
    await ctx["redis"].rpush("starts", json.dumps(entry))


@asyncjobs.job(queue="billing")
async def billing_stamp(ctx: dict[str, Any], n: int) -> None:
    """A job of the queue ``billing``: records n in the list ``billing-starts``."""
    await ctx["redis"].rpush("billing-starts", n)


@asyncjobs.job
async def marker(ctx: dict[str, Any], n: int) -> None:
    """A job of the default queue: records n in the list ``markers``."""
    await ctx["redis"].rpush("markers", n)
