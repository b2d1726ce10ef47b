"""Exclusive jobs for the advisory-lock tests (ASYNCJOBS_IMPORTS=tests.lockjobs)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.worker import Retry

import asyncjobs


@asyncjobs.job(lock=lambda account_id, n: f"account:{account_id}", lock_retry=0.05, max_tries=2)
async def post_entry(ctx: dict[str, Any], account_id: int, n: int) -> None:
    """Records when it ran; two of these must never overlap for one account."""
    started = time.time()
    await asyncio.sleep(0.02)
    pool = await ctx["asyncjobs"].db()
    await pool.execute(
        "INSERT INTO lock_runs (n, started, ended, pid) VALUES ($1, $2, $3, $4)",
        n,
        started,
        time.time(),
        os.getpid(),
    )


@asyncjobs.job(lock=lambda account_id, seconds: f"acct:{account_id}", lock_retry=0.05)
async def hold(ctx: dict[str, Any], account_id: int, seconds: float) -> None:
    """Holds the account's lock until the test sets ``release:<account_id>``, at most
    ``seconds``; records when and in which process it took it in the list ``held``."""
    await ctx["redis"].rpush("held", f"{time.time():.6f} {os.getpid()}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not await ctx["redis"].exists(f"release:{account_id}"):
        await asyncio.sleep(0.02)


@asyncjobs.job(lock=lambda account_id: f"acct:{account_id}", on_locked="drop")
async def optional_refresh(ctx: dict[str, Any], account_id: int) -> None:
    await ctx["redis"].rpush("refreshed", account_id)


@asyncjobs.job(lock=lambda account_id: f"acct:{account_id}", lock_retry=0.05, max_tries=2)
async def settle(ctx: dict[str, Any], account_id: int) -> None:
    """Asks for one retry itself (arq's Retry), then records that it settled."""
    if await ctx["redis"].incr(f"settle_runs:{account_id}") == 1:
        raise Retry(defer=0.05)
    await ctx["redis"].rpush("settled", account_id)


@asyncjobs.job(lock=lambda account_id: f"acct:{account_id}", lock_retry=0.05, max_tries=1)
async def refund(ctx: dict[str, Any], account_id: int) -> None:
    raise ValueError("the card is closed")
