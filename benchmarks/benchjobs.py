"""Jobs the benchmarks run (ASYNCJOBS_IMPORTS=benchmarks.benchjobs)."""

from __future__ import annotations

from typing import Any

import asyncjobs


@asyncjobs.job
async def noop(ctx: dict[str, Any], n: int = 0) -> None:
    """Does nothing: what is measured is the runtime's own cost per job."""


async def bare_noop(ctx: dict[str, Any], n: int = 0) -> None:
    """The same job for bare arq."""
