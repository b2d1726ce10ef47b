"""A reconciler whose query is broken, next to a healthy one (used by a worker test)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncjobs
from tests.recjobs import create_database


@asyncjobs.reconciler(job=create_database, every=timedelta(seconds=1))
async def broken_reconciler(ctx: dict[str, Any]) -> str:
    return "SELECT id FROM no_such_table WHERE state = 'pending'"
