"""The provisioning API in FastAPI: a lifespan owns the App, a dependency hands it out.

Run it with ``uvicorn examples.provisioning.fastapi_app:api`` and the same
``ASYNCJOBS_*`` environment as the worker. The lifespan opens one
:class:`asyncjobs.App` for the process (settings from the environment) and closes it
at shutdown; handlers get it through the ``Jobs`` dependency (``jobs: Jobs``) and call
``await jobs.enqueue(...)``, so a test can hand them another App with
``api.dependency_overrides``. Pydantic checks the bodies (a bad one is a 422); what
each handler does is ``service.py``, shared with the Starlette and aiohttp versions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import asyncjobs

from . import schema, service
from .service import MAX_BULK, BadRequest, Conflict, NotFound

NAME_PATTERN = service.NAME.pattern


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    """One asyncjobs App for the process, its tables in place; closed at shutdown."""
    async with asyncjobs.App() as jobs:
        api.state.jobs = jobs
        api.state.db = await jobs.db()
        await schema.create_schema(api.state.db)
        yield


def get_jobs(request: Request) -> asyncjobs.App:
    """The process's App (the dependency handlers ask for)."""
    jobs: asyncjobs.App = request.app.state.jobs
    return jobs


def get_db(request: Request) -> asyncpg.Pool:
    """The App's PostgreSQL pool, where the example's rows live."""
    return request.app.state.db


Jobs = Annotated[asyncjobs.App, Depends(get_jobs)]
Db = Annotated[asyncpg.Pool, Depends(get_db)]


class NewDatabase(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    owner_email: str = Field(min_length=1)


class NewDatabases(BaseModel):
    count: int = Field(ge=1, le=MAX_BULK)
    prefix: str = Field(pattern=NAME_PATTERN)
    owner_email: str = Field(min_length=1)


class Owner(BaseModel):
    owner_email: str = Field(min_length=1)


api = FastAPI(title="provisioning", lifespan=lifespan)


@api.post("/databases", status_code=202)
async def create_database(body: NewDatabase, jobs: Jobs, db: Db) -> dict[str, Any]:
    return await service.create_database(jobs, db, body.name, body.owner_email)


@api.post("/databases/bulk", status_code=202)
async def create_databases(body: NewDatabases, jobs: Jobs, db: Db) -> dict[str, Any]:
    return await service.create_databases(jobs, db, body.count, body.prefix, body.owner_email)


@api.get("/databases/{database_id}")
async def get_database(database_id: int, db: Db) -> dict[str, Any]:
    return await service.get_database(db, database_id)


@api.patch("/databases/{database_id}")
async def update_database(database_id: int, body: Owner, db: Db) -> dict[str, Any]:
    return await service.update_database(db, database_id, body.owner_email)


@api.delete("/databases/{database_id}", status_code=202)
async def delete_database(database_id: int, jobs: Jobs, db: Db) -> dict[str, Any]:
    return await service.delete_database(jobs, db, database_id)


@api.get("/stats")
async def get_stats(db: Db) -> dict[str, int]:
    return await service.stats(db)


@api.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


def _answer(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handler


api.add_exception_handler(BadRequest, _answer(400))
api.add_exception_handler(NotFound, _answer(404))
api.add_exception_handler(Conflict, _answer(409))
