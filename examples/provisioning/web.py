"""The provisioning API: async Starlette handlers that write a row and enqueue its job.

Run it with ``uvicorn examples.provisioning.web:app`` and the same ``ASYNCJOBS_*``
environment as the worker. Starlette because it is the async core that FastAPI
is built on: these handlers are FastAPI handlers without the validation layer,
the lifespan is the same, and the example needs one small dependency.

What each handler does is in ``service.py``, shared with the same API in FastAPI
(``fastapi_app.py``) and in aiohttp (``aiohttp_app.py``): the row first, then the
enqueue, and a 202 that says whether it queued.

Endpoints: ``POST /databases`` {name, owner_email}; ``POST /databases/bulk``
{count, prefix, owner_email}; ``GET /databases/{id}``; ``PATCH
/databases/{id}`` {owner_email}; ``DELETE /databases/{id}``; ``GET /stats``;
``GET /health``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asyncjobs

from . import schema, service
from .service import NAME, BadRequest, Conflict, NotFound, text


@asynccontextmanager
async def lifespan(web: Starlette) -> AsyncIterator[None]:
    """One asyncjobs App for the process (settings from ``ASYNCJOBS_*``), closed at shutdown."""
    async with asyncjobs.App() as jobs:
        previous = asyncjobs.set_app(jobs)  # module-level enqueue() uses it
        web.state.jobs = jobs
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


async def create_database(request: Request) -> JSONResponse:
    body = await _body(request, "name", "owner_email")
    name, email = text(body, "name", NAME), text(body, "owner_email")
    state = request.app.state
    return JSONResponse(
        await service.create_database(state.jobs, state.db, name, email), status_code=202
    )


async def create_databases(request: Request) -> JSONResponse:
    """Many at once: one INSERT, then ``enqueue_many`` (1,000 jobs per Redis round trip)."""
    body = await _body(request, "count", "prefix", "owner_email")
    prefix, email = text(body, "prefix", NAME), text(body, "owner_email")
    state = request.app.state
    answer = await service.create_databases(state.jobs, state.db, body["count"], prefix, email)
    return JSONResponse(answer, status_code=202)


async def get_database(request: Request) -> JSONResponse:
    database_id = service.parse_id(request.path_params["id"])
    return JSONResponse(await service.get_database(request.app.state.db, database_id))


async def update_database(request: Request) -> JSONResponse:
    """Fix the owner's address (clears a mail error, so the job can be retried)."""
    database_id = service.parse_id(request.path_params["id"])
    await service.get_database(request.app.state.db, database_id)  # 404 before the body
    email = text(await _body(request, "owner_email"), "owner_email")
    return JSONResponse(await service.update_database(request.app.state.db, database_id, email))


async def delete_database(request: Request) -> JSONResponse:
    """Mark the row ``deleting`` and enqueue its cleanup, which is unique for ten minutes."""
    database_id = service.parse_id(request.path_params["id"])
    state = request.app.state
    return JSONResponse(
        await service.delete_database(state.jobs, state.db, database_id), status_code=202
    )


async def get_stats(request: Request) -> JSONResponse:
    return JSONResponse(await service.stats(request.app.state.db))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _answer(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handler


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
    exception_handlers={BadRequest: _answer(400), NotFound: _answer(404), Conflict: _answer(409)},
)
