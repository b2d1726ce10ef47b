"""Jobs the worker subprocesses in the tests register (ASYNCJOBS_IMPORTS=tests.workerjobs).

Each job records what it was called with in the Redis list ``runs``, through
the worker's own connection, so a test can see that it ran and with what.
"""

from __future__ import annotations

import json
import time
from typing import Any

import asyncjobs


async def _record(ctx: dict[str, Any], name: str, *args: Any, **kwargs: Any) -> None:
    entry = {"job": name, "args": list(args), "kwargs": kwargs, "job_id": ctx["job_id"]}
    await ctx["redis"].rpush("runs", json.dumps(entry))


@asyncjobs.job
async def record_args(ctx: dict[str, Any], a: Any, b: Any = None, *, note: str = "") -> str:
    await _record(ctx, "record_args", a, b, note=note)
    return "done"


@asyncjobs.job
class InvoiceJob:
    """A class-based job: perform() runs on a fresh instance with self.ctx set."""

    ctx: dict[str, Any]

    async def perform(self, invoice_id: int) -> None:
        await _record(self.ctx, "invoice_job", invoice_id)


@asyncjobs.job(max_tries=1)
async def always_fails(ctx: dict[str, Any], n: int) -> None:
    await _record(ctx, "always_fails", n)
    raise RuntimeError(f"boom {n}")


@asyncjobs.job
async def count_run(ctx: dict[str, Any], n: int) -> None:
    """Counts how often each n ran, in the hash ``counts``."""
    await ctx["redis"].hincrby("counts", str(n), 1)


@asyncjobs.job
async def blocks_the_loop(ctx: dict[str, Any], seconds: float) -> None:
    """Counts its starts in the key ``blocking-starts``, then blocks its worker's event
    loop for ``seconds`` (``time.sleep`` in an ``async def``: the mistake it stands for)."""
    await ctx["redis"].incr("blocking-starts")
    time.sleep(seconds)  # noqa: ASYNC251 -- blocking the loop is what this job is for
