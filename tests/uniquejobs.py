"""Unique jobs for the uniqueness tests (ASYNCJOBS_IMPORTS=tests.uniquejobs).

The blocking ones record their start in ``started:<job>`` and wait for the
Redis key ``go:<job>`` before they finish, so a test can act while they run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncjobs


async def _run_until_released(ctx: dict[str, Any], name: str, within: float = 60.0) -> None:
    await ctx["redis"].rpush(f"started:{name}", ctx["job_id"])
    deadline = time.monotonic() + within
    while not await ctx["redis"].exists(f"go:{name}"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"go:{name} was not set within {within}s")
        await asyncio.sleep(0.02)


@asyncjobs.job(unique_for=60)
async def sync_account(ctx: dict[str, Any], account_id: int) -> None:
    await _run_until_released(ctx, "sync_account")


@asyncjobs.job(unique_for=60, unique_until="start")
async def refresh_account(ctx: dict[str, Any], account_id: int) -> None:
    await _run_until_released(ctx, "refresh_account")


@asyncjobs.job(unique_for=0.3)
async def short_lived(ctx: dict[str, Any], n: int) -> None:
    return None


@asyncjobs.job(unique_for=60, unique_key=lambda account_id, **_: account_id)
async def by_account(ctx: dict[str, Any], account_id: int, note: str = "") -> None:
    return None


@asyncjobs.job(unique_for=60, max_tries=3, backoff=asyncjobs.Backoff(base=1.0, jitter=0))
async def fails_once(ctx: dict[str, Any], n: int) -> None:
    if await ctx["redis"].incr("fails_once") == 1:
        raise RuntimeError("first try fails")
    await ctx["redis"].rpush("succeeded:fails_once", ctx["job_id"])


@asyncjobs.job(unique_for=60, max_tries=1)
async def dies(ctx: dict[str, Any], n: int) -> None:
    raise RuntimeError("always")
