"""The provisioning API in aiohttp: a cleanup context owns the App, handlers read it by key.

Run it with ``python -m aiohttp.web -H 127.0.0.1 -P 8000
examples.provisioning.aiohttp_app:create_app`` and the same ``ASYNCJOBS_*``
environment as the worker. :func:`asyncjobs_ctx` opens one :class:`asyncjobs.App`
when the server starts and closes it when it stops; handlers find it as
``request.app[JOBS]``. What each handler does is ``service.py``, shared with the
Starlette and FastAPI versions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

import asyncjobs

from . import schema, service
from .service import NAME, BadRequest, Conflict, NotFound, text

JOBS = web.AppKey("asyncjobs", asyncjobs.App)
DB = web.AppKey("db", asyncpg.Pool)

routes = web.RouteTableDef()


async def asyncjobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp's cleanup context: the App for the server's life, the tables in place."""
    async with asyncjobs.App() as jobs:
        app[JOBS] = jobs
        app[DB] = await jobs.db()
        await schema.create_schema(app[DB])
        yield


async def _body(request: web.Request, *fields: str) -> dict[str, Any]:
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


@routes.post("/databases")
async def create_database(request: web.Request) -> web.Response:
    body = await _body(request, "name", "owner_email")
    name, email = text(body, "name", NAME), text(body, "owner_email")
    app = request.app
    answer = await service.create_database(app[JOBS], app[DB], name, email)
    return web.json_response(answer, status=202)


@routes.post("/databases/bulk")
async def create_databases(request: web.Request) -> web.Response:
    body = await _body(request, "count", "prefix", "owner_email")
    prefix, email = text(body, "prefix", NAME), text(body, "owner_email")
    app = request.app
    answer = await service.create_databases(app[JOBS], app[DB], body["count"], prefix, email)
    return web.json_response(answer, status=202)


@routes.get("/databases/{id}")
async def get_database(request: web.Request) -> web.Response:
    database_id = service.parse_id(request.match_info["id"])
    return web.json_response(await service.get_database(request.app[DB], database_id))


@routes.patch("/databases/{id}")
async def update_database(request: web.Request) -> web.Response:
    database_id = service.parse_id(request.match_info["id"])
    await service.get_database(request.app[DB], database_id)  # 404 before the body
    email = text(await _body(request, "owner_email"), "owner_email")
    return web.json_response(await service.update_database(request.app[DB], database_id, email))


@routes.delete("/databases/{id}")
async def delete_database(request: web.Request) -> web.Response:
    database_id = service.parse_id(request.match_info["id"])
    app = request.app
    answer = await service.delete_database(app[JOBS], app[DB], database_id)
    return web.json_response(answer, status=202)


@routes.get("/stats")
async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(await service.stats(request.app[DB]))


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


_STATUS = {BadRequest: 400, NotFound: 404, Conflict: 409}


@web.middleware
async def errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The service's exceptions as JSON answers with their status."""
    try:
        return await handler(request)
    except (BadRequest, NotFound, Conflict) as exc:
        return web.json_response({"error": str(exc)}, status=_STATUS[type(exc)])


def create_app() -> web.Application:
    """The aiohttp application (a factory: each call is a new one, as tests want)."""
    app = web.Application(middlewares=[errors])
    app.cleanup_ctx.append(asyncjobs_ctx)
    app.add_routes(routes)
    return app
