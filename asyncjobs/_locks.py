"""Row locks for jobs that change a row: the "use database locks" layer.

A job re-reads its row under ``SELECT ... FOR UPDATE`` and returns at once if
the row no longer needs work ("exit quickly"), so duplicates of a job (from a
reconciler, a retry and a user at once) do no harm::

    @asyncjobs.job
    async def create_database(ctx, database_id):
        pool = await ctx["asyncjobs"].db()
        async with pool.acquire() as conn, row_lock(conn, "databases", database_id) as row:
            if row is None or row["state"] != "pending":
                return                      # done already, or gone: exit quickly
            ...                             # do the work
            await conn.execute("UPDATE databases SET state = 'ready' WHERE id = $1", database_id)
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._exceptions import AsyncJobsError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _quote(name: str, what: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise AsyncJobsError(
            f"{what} {name!r} is not a plain identifier (letters, digits, underscores; "
            "optionally schema.table)"
        )
    return ".".join(f'"{p}"' for p in parts)


@asynccontextmanager
async def row_lock(
    conn: Any, table: str, key: Any, *, column: str = "id", nowait: bool = False
) -> AsyncIterator[Any]:
    """Open a transaction on ``conn`` and lock the row of ``table`` whose ``column`` is ``key``.

    Yields the row (an asyncpg Record) or ``None`` if there is none; the lock is
    held until the block ends, when the transaction commits (or rolls back on
    an exception). ``nowait=True`` raises asyncpg's ``LockNotAvailableError``
    instead of waiting for another holder. ``table`` and ``column`` must be
    plain identifiers; they are quoted, never interpolated as given.
    """
    sql = (
        f"SELECT * FROM {_quote(table, 'table')} WHERE {_quote(column, 'column')} = $1 "
        f"FOR UPDATE{' NOWAIT' if nowait else ''}"
    )
    async with conn.transaction():
        yield await conn.fetchrow(sql, key)
