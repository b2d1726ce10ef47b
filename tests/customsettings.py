"""A WorkerSettings subclass, as a user would write one (used by a worker test)."""

from __future__ import annotations

from typing import Any

import asyncjobs
import tests.workerjobs  # noqa: F401 -- registers the jobs


class Custom(asyncjobs.WorkerSettings):
    max_jobs = 7

    @staticmethod
    async def on_startup(ctx: dict[str, Any]) -> None:
        print("custom startup hook ran", flush=True)
        await ctx["redis"].set("custom-max-jobs", Custom.max_jobs)
