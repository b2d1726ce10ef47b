"""Jobs the benchmarks run (ASYNCJOBS_IMPORTS=benchmarks.benchjobs)."""

from __future__ import annotations

from typing import Any

import asyncjobs


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
