"""Jobs for the quickstart demo. A worker registers them with
ASYNCJOBS_IMPORTS=examples.quickstart.jobs."""

from __future__ import annotations

import json
from typing import Any

import asyncjobs


@asyncjobs.job
async def send_welcome_email(ctx: dict[str, Any], user_id: int, *, locale: str = "en") -> None:
    """Pretend to send an email; record that it ran, for the demo to show."""
    await ctx["redis"].rpush(
        "demo:ran", json.dumps({"job": "send_welcome_email", "user_id": user_id, "locale": locale})
    )


@asyncjobs.job(queue="arq:queue", timeout=30)
class InvoiceJob:
    """A class-based job: ``perform`` runs on a fresh instance; ``self.ctx`` is arq's context."""

    ctx: dict[str, Any]

    async def perform(self, invoice_id: int) -> None:
        await self.ctx["redis"].rpush(
            "demo:ran", json.dumps({"job": "invoice_job", "invoice_id": invoice_id})
        )
