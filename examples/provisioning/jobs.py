"""The provisioning service's jobs and the reconcilers that make them self-healing.

Every job follows the same pattern: lock its row, return at once if the row
no longer needs the work ("exit quickly"), do the work, move the row on. So a
copy of a job (from a reconciler, a retry, a user clicking twice) does no harm,
and every job can be re-enqueued at any time by its reconciler, which finds the
rows still waiting for it. The state is in PostgreSQL; Redis only carries the
work, and losing all of it loses nothing.

Knobs (environment variables, for the demo; production keeps the defaults):
``PROVISIONING_RECONCILE_EVERY`` (seconds, 60), ``PROVISIONING_BACKUP_EVERY``
(seconds, 300) and ``PROVISIONING_WORK`` (seconds a provisioning takes, 0.2).
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import timedelta
from typing import Any

import asyncjobs

RECONCILE_EVERY = timedelta(seconds=int(os.environ.get("PROVISIONING_RECONCILE_EVERY", "60")))
BACKUP_EVERY = timedelta(seconds=int(os.environ.get("PROVISIONING_BACKUP_EVERY", "300")))
WORK = float(os.environ.get("PROVISIONING_WORK", "0.2"))

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class MailServerBusy(Exception):
    """A passing failure: the job is retried with backoff."""


class InvalidAddress(Exception):
    """A failure no retry can fix: the job gives up at once and becomes a dead letter."""


def stable_id(job_name: str, database_id: int) -> str:
    """The job id a reconciler gives this job, so an enqueue here and the reconciler's
    enqueue of the same work never put two copies in the queue."""
    return asyncjobs.stable_job_id(job_name, (database_id,), {})


@asyncjobs.job(timeout=60, max_tries=5, backoff=asyncjobs.Backoff(base=1.0, cap=30.0))
async def create_database_job(ctx: dict[str, Any], database_id: int) -> str:
    """Provision the database of a ``pending`` row, mark it ``ready``, and mail its owner."""
    app: asyncjobs.App = ctx["asyncjobs"]
    pool = await app.db()
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE databases SET create_attempts = create_attempts + 1 WHERE id = $1",
            database_id,
        )
        async with asyncjobs.row_lock(conn, "databases", database_id) as row:
            if row is None or row["state"] != "pending":
                return "nothing to do"  # exit quickly: another copy did it, or it was deleted
            await asyncio.sleep(WORK)  # stands for the real work: ask the cloud for a database
            await conn.execute("INSERT INTO provisioned (database_id) VALUES ($1)", database_id)
            await conn.execute(
                "UPDATE databases SET state = 'ready', ready_at = now() WHERE id = $1", database_id
            )
    await app.enqueue(
        notify_owner_job, database_id, _job_id=stable_id("notify_owner_job", database_id)
    )
    return "ready"


@asyncjobs.job(
    max_tries=4,
    backoff=asyncjobs.Backoff(base=0.5, cap=5.0),
    give_up_on=InvalidAddress,
)
async def notify_owner_job(ctx: dict[str, Any], database_id: int) -> str:
    """Mail the owner that the database is ready.

    The (pretend) mail server is busy for every fourth database on the first
    try: the job is retried. An address that cannot be mailed is recorded on
    the row and the job gives up: it becomes a dead letter, for an operator to
    retry once the address is fixed (``PATCH /databases/{id}``).
    """
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn, asyncjobs.row_lock(conn, "databases", database_id) as row:
        if row is None or row["state"] != "ready" or row["notified_at"] is not None:
            return "nothing to do"
        address = row["owner_email"]
        if _EMAIL.match(address):
            if ctx["job_try"] == 1 and database_id % 4 == 0:
                raise MailServerBusy("421 mail server busy, try again later")
            await conn.execute(
                "UPDATE databases SET notified_at = now(), notify_error = NULL WHERE id = $1",
                database_id,
            )
            return "sent"
        problem = f"cannot mail {address!r}: not an email address"
        await conn.execute(
            "UPDATE databases SET notify_error = $2 WHERE id = $1", database_id, problem
        )
    raise InvalidAddress(problem)  # after the commit, so the row keeps the error


@asyncjobs.job(max_tries=3)
async def backup_database_job(ctx: dict[str, Any], database_id: int) -> str:
    """Take a backup of a ready database."""
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn, asyncjobs.row_lock(conn, "databases", database_id) as row:
        if row is None or row["state"] != "ready":
            return "nothing to do"
        await asyncio.sleep(WORK / 4)
        await conn.execute("INSERT INTO backups (database_id) VALUES ($1)", database_id)
    return "backed up"


@asyncjobs.job(unique_for=timedelta(minutes=10))
async def cleanup_database_job(ctx: dict[str, Any], database_id: int) -> str:
    """Tear down a database whose row is ``deleting``; unique, so a second delete is refused."""
    pool = await ctx["asyncjobs"].db()
    async with pool.acquire() as conn, asyncjobs.row_lock(conn, "databases", database_id) as row:
        if row is None or row["state"] != "deleting":
            return "nothing to do"
        await asyncio.sleep(WORK)
        await conn.execute(
            "UPDATE databases SET state = 'deleted', deleted_at = now() WHERE id = $1", database_id
        )
    return "deleted"


# The reconcilers: each finds the rows still waiting for a job and enqueues it again
# (once per period across all workers; a copy still queued is not queued twice).


@asyncjobs.reconciler(job=create_database_job, every=RECONCILE_EVERY)
async def pending_databases(ctx: dict[str, Any]) -> str:
    return "SELECT id FROM databases WHERE state = 'pending' ORDER BY id"


@asyncjobs.reconciler(job=notify_owner_job, every=RECONCILE_EVERY)
async def unnotified_databases(ctx: dict[str, Any]) -> str:
    return (
        "SELECT id FROM databases WHERE state = 'ready' AND notified_at IS NULL "
        "AND notify_error IS NULL ORDER BY id"
    )


@asyncjobs.reconciler(job=cleanup_database_job, every=RECONCILE_EVERY)
async def deleting_databases(ctx: dict[str, Any]) -> str:
    return "SELECT id FROM databases WHERE state = 'deleting' ORDER BY id"


@asyncjobs.reconciler(job=backup_database_job, every=BACKUP_EVERY, jitter=BACKUP_EVERY / 2)
async def scheduled_backups(ctx: dict[str, Any]) -> str:
    """Every ready database, backed up once per period, spread over half the period."""
    return "SELECT id FROM databases WHERE state = 'ready' ORDER BY id"
