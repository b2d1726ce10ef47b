"""Jobs the benchmarks run (ASYNCJOBS_IMPORTS=benchmarks.benchjobs)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import func

import asyncjobs
from asyncjobs.serializer import deserialize, serialize


@asyncjobs.job
async def noop(ctx: dict[str, Any], n: int = 0) -> None:
    """Does nothing: what is measured is the runtime's own cost per job."""


async def bare_noop(ctx: dict[str, Any], n: int = 0) -> None:
    """The same job for bare arq."""


@asyncjobs.job(unique_for=60)
async def unique_noop(ctx: dict[str, Any], n: int = 0) -> None:
    """A no-op that is unique per argument for a minute."""


@asyncjobs.job(exclusive=True)
async def exclusive_noop(ctx: dict[str, Any], n: int = 0) -> None:
    """A no-op that runs under an advisory lock of its own (no contention)."""


@asyncjobs.job
async def sleepy(ctx: dict[str, Any], n: int, seconds: float) -> None:
    """Sleeps, then counts itself done (the recovery benchmark SIGKILLs its worker midway)."""
    await ctx["redis"].rpush("bench:started", n)
    await asyncio.sleep(seconds)
    await ctx["redis"].hincrby("bench:done", str(n), 1)


@asyncjobs.job
async def counted(ctx: dict[str, Any], n: int) -> None:
    """Counts each run of ``n``: duplicates show as counts above 1."""
    await ctx["redis"].hincrby("bench:counts", str(n), 1)


@asyncjobs.job
async def stamp(ctx: dict[str, Any], n: int) -> None:
    """Its first line records the time, for the wake-up latency."""
    now = time.time()
    await ctx["redis"].rpush("bench:stamps", f"{n} {now}")


async def bare_stamp(ctx: dict[str, Any], n: int) -> None:
    """The same for arq's own worker."""
    now = time.time()
    await ctx["redis"].rpush("bench:stamps", f"{n} {now}")


class ArqStampSettings:
    """``arq benchmarks.benchjobs.ArqStampSettings``: arq's worker, tuned as asyncjobs
    (poll 0.05 s), running ``stamp``; REDIS from ``BENCH_REDIS_URL``."""

    functions: ClassVar[list[Any]] = [func(bare_stamp, name="stamp")]
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://localhost"))
    job_serializer = staticmethod(serialize)
    job_deserializer = staticmethod(deserialize)
    poll_delay = 0.05
    keep_result = 0
