"""The provisioning API: async Starlette handlers that write a row and enqueue its job.

Run it with ``uvicorn examples.provisioning.web:app`` and the same ``ASYNCJOBS_*``
environment as the worker. Starlette because it is the async core that FastAPI
is built on: these handlers are FastAPI handlers without the validation layer,
the lifespan is the same, and the example needs one small dependency.

The pattern of every write: the row first (the truth, in PostgreSQL), then
``await enqueue(...)``. If the enqueue is refused (a kill switch) or fails
(Redis down), the row is still there, ``pending``, and the reconciler enqueues
its job later: the API answers 202 either way and says whether it queued.

Endpoints: ``POST /databases`` {name, owner_email}; ``POST /databases/bulk``
{count, prefix, owner_email}; ``GET /databases/{id}``; ``PATCH
/databases/{id}`` {owner_email}; ``DELETE /databases/{id}``; ``GET /stats``;
``GET /health``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asyncjobs

from . import schema
from .jobs import cleanup_database_job, create_database_job, stable_id

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_BULK = 10_000


class BadRequest(Exception):
    """The request's fault; answered with 400 and this message."""


class NotFound(Exception):
    """No such database; answered with 404 and this message."""


@asynccontextmanager
async def lifespan(web: Starlette) -> AsyncIterator[None]:
    """One asyncjobs App for the process (settings from ``ASYNCJOBS_*``), closed at shutdown."""
    async with asyncjobs.App() as jobs:
        previous = asyncjobs.set_app(jobs)  # module-level enqueue() uses it
        web.state.db = await jobs.db()
        await schema.create_schema(web.state.db)  # the example's tables, if missing
        try:
            yield
        finally:
            asyncjobs.set_app(previous)


async def _body(request: Request, *fields: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    missing = [f for f in fields if f not in body]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    return body


def _text(body: dict[str, Any], field: str, pattern: re.Pattern[str] | None = None) -> str:
    value = body[field]
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        rule = f" matching {pattern.pattern}" if pattern else ""
        raise BadRequest(f"{field} must be a non-empty string{rule}, not {value!r}")
    return value


async def _enqueue_create(database_id: int) -> dict[str, Any]:
    """Enqueue the row's job; whatever happens, the row waits as pending for the reconciler."""
    try:
        job = await asyncjobs.enqueue(
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


async def create_database(request: Request) -> JSONResponse:
    body = await _body(request, "name", "owner_email")
    name, email = _text(body, "name", _NAME), _text(body, "owner_email")
    try:
        row = await request.app.state.db.fetchrow(
            "INSERT INTO databases (name, owner_email) VALUES ($1, $2) RETURNING id, state",
            name,
            email,
        )
    except asyncpg.UniqueViolationError:
        return JSONResponse({"error": f"a database named {name!r} exists"}, status_code=409)
    return JSONResponse(
        {"id": row["id"], "state": row["state"], **await _enqueue_create(row["id"])},
        status_code=202,
    )


async def create_databases(request: Request) -> JSONResponse:
    """Many at once: one INSERT, then ``enqueue_many`` (1,000 jobs per Redis round trip)."""
    body = await _body(request, "count", "prefix", "owner_email")
    count = body["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BULK:
        raise BadRequest(f"count must be a whole number from 1 to {MAX_BULK}, not {count!r}")
    prefix, email = _text(body, "prefix", _NAME), _text(body, "owner_email")
    ids = [
        r["id"]
        for r in await request.app.state.db.fetch(
            "INSERT INTO databases (name, owner_email) "
            "SELECT $1 || '-' || g, $2 FROM generate_series(1, $3) g "
            "ON CONFLICT (name) DO NOTHING RETURNING id",
            prefix,
            email,
            count,
        )
    ]
    items = [asyncjobs.Args(i, _job_id=stable_id("create_database_job", i)) for i in ids]
    try:
        jobs = await asyncjobs.enqueue_many(create_database_job, items)
    except asyncjobs.ServiceUnavailableError as exc:
        return JSONResponse({"created": len(ids), "queued": 0, "note": str(exc)}, status_code=202)
    return JSONResponse(
        {"created": len(ids), "queued": sum(job is not None for job in jobs)}, status_code=202
    )


async def _row(request: Request) -> dict[str, Any]:
    try:
        database_id = int(request.path_params["id"])
    except ValueError:
        raise BadRequest("the id must be a whole number") from None
    row = await request.app.state.db.fetchrow("SELECT * FROM databases WHERE id = $1", database_id)
    if row is None:
        raise NotFound(f"no database {database_id}")
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


async def get_database(request: Request) -> JSONResponse:
    return JSONResponse(await _row(request))


async def update_database(request: Request) -> JSONResponse:
    """Fix the owner's address (clears a mail error, so the job can be retried)."""
    row = await _row(request)
    email = _text(await _body(request, "owner_email"), "owner_email")
    await request.app.state.db.execute(
        "UPDATE databases SET owner_email = $2, notify_error = NULL WHERE id = $1",
        row["id"],
        email,
    )
    return JSONResponse(await _row(request))


async def delete_database(request: Request) -> JSONResponse:
    """Mark the row ``deleting`` and enqueue its cleanup, which is unique for ten minutes."""
    row = await _row(request)
    if row["state"] not in ("ready", "deleting"):
        return JSONResponse(
            {"error": f"database {row['id']} is {row['state']}; only ready ones can be deleted"},
            status_code=409,
        )
    if row["state"] == "ready":  # a second delete must not wait on a cleanup's row lock
        await request.app.state.db.execute(
            "UPDATE databases SET state = 'deleting' WHERE id = $1", row["id"]
        )
    job = await asyncjobs.enqueue(cleanup_database_job, row["id"])
    answer: dict[str, Any] = {"id": row["id"], "state": "deleting", "queued": job is not None}
    if job is None:
        answer["note"] = "a cleanup of this database is already scheduled (unique for 10 minutes)"
    return JSONResponse(answer, status_code=202)


async def get_stats(request: Request) -> JSONResponse:
    return JSONResponse(await schema.stats(request.app.state.db))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=404)


app = Starlette(
    routes=[
        Route("/databases", create_database, methods=["POST"]),
        Route("/databases/bulk", create_databases, methods=["POST"]),
        Route("/databases/{id}", get_database, methods=["GET"]),
        Route("/databases/{id}", update_database, methods=["PATCH"]),
        Route("/databases/{id}", delete_database, methods=["DELETE"]),
        Route("/stats", get_stats, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ],
    lifespan=lifespan,
    exception_handlers={BadRequest: _bad_request, NotFound: _not_found},
)
