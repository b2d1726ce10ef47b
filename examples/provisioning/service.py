"""The provisioning API's logic without a web framework: what every handler does.

``web.py`` (Starlette), ``fastapi_app.py`` and ``aiohttp_app.py`` are thin layers over
these functions: each reads the request, calls one of them with the process's
:class:`asyncjobs.App` and its PostgreSQL pool, and turns the result (or
:class:`BadRequest`, :class:`NotFound`, :class:`Conflict`) into a response.

The pattern of every write: the row first (the truth, in PostgreSQL), then
``await jobs.enqueue(...)``. If the enqueue is refused (a kill switch) or fails
(Redis down), the row is still there, ``pending``, and the reconciler enqueues
its job later: the API answers 202 either way and says whether it queued.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

import asyncjobs

from . import schema
from .jobs import cleanup_database_job, create_database_job, stable_id

NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_BULK = 10_000


class BadRequest(Exception):
    """The request's fault; answered with 400 and this message."""


class NotFound(Exception):
    """No such database; answered with 404 and this message."""


class Conflict(Exception):
    """The request clashes with the row's state; answered with 409 and this message."""


def text(body: dict[str, Any], field: str, pattern: re.Pattern[str] | None = None) -> str:
    """``body[field]`` if it is a non-empty string (matching ``pattern``), else BadRequest."""
    value = body[field]
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        rule = f" matching {pattern.pattern}" if pattern else ""
        raise BadRequest(f"{field} must be a non-empty string{rule}, not {value!r}")
    return value


async def _enqueue_create(jobs: asyncjobs.App, database_id: int) -> dict[str, Any]:
    """Enqueue the row's job; whatever happens, the row waits as pending for the reconciler."""
    try:
        job = await jobs.enqueue(
            create_database_job,
            database_id,
            _job_id=stable_id("create_database_job", database_id),
        )
    except asyncjobs.ServiceUnavailableError as exc:
        return {"queued": False, "note": f"{exc}; the reconciler will enqueue it"}
    if job is None:
        return {
            "queued": False,
            "note": "create_database_job is switched off or already queued; "
            "the row waits as pending and the reconciler enqueues it",
        }
    return {"queued": True, "job_id": job.job_id}


async def create_database(
    jobs: asyncjobs.App, db: asyncpg.Pool, name: str, owner_email: str
) -> dict[str, Any]:
    """Write a ``pending`` row and enqueue its ``create_database_job``."""
    try:
        row = await db.fetchrow(
            "INSERT INTO databases (name, owner_email) VALUES ($1, $2) RETURNING id, state",
            name,
            owner_email,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a database named {name!r} exists") from None
    return {"id": row["id"], "state": row["state"], **await _enqueue_create(jobs, row["id"])}


async def create_databases(
    jobs: asyncjobs.App, db: asyncpg.Pool, count: Any, prefix: str, owner_email: str
) -> dict[str, Any]:
    """Many at once: one INSERT, then ``enqueue_many`` (1,000 jobs per Redis round trip)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BULK:
        raise BadRequest(f"count must be a whole number from 1 to {MAX_BULK}, not {count!r}")
    ids = [
        r["id"]
        for r in await db.fetch(
            "INSERT INTO databases (name, owner_email) "
            "SELECT $1 || '-' || g, $2 FROM generate_series(1, $3) g "
            "ON CONFLICT (name) DO NOTHING RETURNING id",
            prefix,
            owner_email,
            count,
        )
    ]
    items = [asyncjobs.Args(i, _job_id=stable_id("create_database_job", i)) for i in ids]
    try:
        queued = await jobs.enqueue_many(create_database_job, items)
    except asyncjobs.ServiceUnavailableError as exc:
        return {"created": len(ids), "queued": 0, "note": str(exc)}
    return {"created": len(ids), "queued": sum(job is not None for job in queued)}


async def get_database(db: asyncpg.Pool, database_id: int) -> dict[str, Any]:
    """The row as JSON-ready values, or NotFound."""
    row = await db.fetchrow("SELECT * FROM databases WHERE id = $1", database_id)
    if row is None:
        raise NotFound(f"no database {database_id}")
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


async def update_database(db: asyncpg.Pool, database_id: int, owner_email: str) -> dict[str, Any]:
    """Fix the owner's address (clears a mail error, so the job can be retried)."""
    row = await get_database(db, database_id)
    await db.execute(
        "UPDATE databases SET owner_email = $2, notify_error = NULL WHERE id = $1",
        row["id"],
        owner_email,
    )
    return await get_database(db, database_id)


async def delete_database(
    jobs: asyncjobs.App, db: asyncpg.Pool, database_id: int
) -> dict[str, Any]:
    """Mark the row ``deleting`` and enqueue its cleanup, which is unique for ten minutes."""
    row = await get_database(db, database_id)
    if row["state"] not in ("ready", "deleting"):
        raise Conflict(f"database {row['id']} is {row['state']}; only ready ones can be deleted")
    if row["state"] == "ready":  # a second delete must not wait on a cleanup's row lock
        await db.execute("UPDATE databases SET state = 'deleting' WHERE id = $1", row["id"])
    job = await jobs.enqueue(cleanup_database_job, row["id"])
    answer: dict[str, Any] = {"id": row["id"], "state": "deleting", "queued": job is not None}
    if job is None:
        answer["note"] = "a cleanup of this database is already scheduled (unique for 10 minutes)"
    return answer


async def stats(db: asyncpg.Pool) -> dict[str, int]:
    """Counts of rows by state, notifications, effects, attempts and backups."""
    return await schema.stats(db)


def parse_id(raw: str) -> int:
    """A path's database id, or BadRequest."""
    try:
        return int(raw)
    except ValueError:
        raise BadRequest("the id must be a whole number") from None
