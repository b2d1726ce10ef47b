"""Jobs for the argument-rule tests (ASYNCJOBS_IMPORTS=tests.rulejobs): two take a
``customer_id``, one does not. Each records its runs in the Redis list ``runs``."""

from __future__ import annotations

import json
from typing import Any

import asyncjobs


async def _record(ctx: dict[str, Any], name: str, *args: Any, **kwargs: Any) -> None:
    entry = {"job": name, "args": list(args), "kwargs": kwargs, "job_id": ctx["job_id"]}
    await ctx["redis"].rpush("runs", json.dumps(entry))


@asyncjobs.job
async def charge_customer(
    ctx: dict[str, Any], invoice_id: int, customer_id: int, region: str = "eu"
) -> None:
    await _record(ctx, "charge_customer", invoice_id, customer_id, region=region)


@asyncjobs.job
async def email_customer(ctx: dict[str, Any], customer_id: int) -> None:
    await _record(ctx, "email_customer", customer_id)


@asyncjobs.job
async def rebuild_index(ctx: dict[str, Any], shard: int) -> None:
    await _record(ctx, "rebuild_index", shard)
