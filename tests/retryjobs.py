"""Jobs that fail in the ways retries must handle (ASYNCJOBS_IMPORTS=tests.retryjobs).

Every run appends ``<time>`` to the Redis list ``runs:<job>``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncjobs

FAST = asyncjobs.Backoff(base=0.05, factor=2, cap=1, jitter=0)


async def _ran(ctx: dict[str, Any], job: str) -> int:
    return int(await ctx["redis"].rpush(f"runs:{job}", f"{time.time():.6f}"))


@asyncjobs.job(max_tries=5, backoff=asyncjobs.Backoff(base=0.4, factor=2, cap=5, jitter=0))
async def flaky(ctx: dict[str, Any], fail_times: int) -> str:
    if await _ran(ctx, "flaky") <= fail_times:
        raise RuntimeError("not yet")
    return "ok"


@asyncjobs.job(max_tries=3, backoff=FAST)
async def doomed(ctx: dict[str, Any], n: int) -> None:
    await _ran(ctx, "doomed")
    raise ValueError(f"doomed {n}")


@asyncjobs.job(max_tries=5, backoff=FAST, give_up_on=KeyError)
async def give_up(ctx: dict[str, Any]) -> None:
    await _ran(ctx, "give_up")
    raise KeyError("no such account")


@asyncjobs.job(max_tries=3, backoff=FAST, timeout=0.3)
async def slow_once(ctx: dict[str, Any]) -> None:
    if await _ran(ctx, "slow_once") == 1:
        await asyncio.Event().wait()  # never set: its first try runs until its timeout


@asyncjobs.job(max_tries=1, redact_args=True)
async def secret(ctx: dict[str, Any], ssn: str) -> None:
    raise PermissionError("denied")


@asyncjobs.job(max_tries=1)
async def fixable(ctx: dict[str, Any], account: int) -> None:
    await _ran(ctx, "fixable")
    if not await ctx["redis"].get("fixed"):
        raise ConnectionError("the bank is down")
