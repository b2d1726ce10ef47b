"""The provisioning service in FastAPI and in aiohttp, tested in process with capture().

Each request goes through the framework for real (httpx's ASGI transport with the
FastAPI app's lifespan; aiohttp's test client and server), the handler enqueues through
the App the framework holds, and ``capture()`` keeps the jobs instead of Redis;
``run_all()`` then runs them (and what they enqueue) on real PostgreSQL. The kill
switch's flags live in PostgreSQL and the uniqueness locks in Redis: both are real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from asyncjobs import App
from asyncjobs.testing import capture
from examples.provisioning import aiohttp_app, fastapi_app
from examples.provisioning.jobs import cleanup_database_job, create_database_job, notify_owner_job

Call = Callable[[str, str, dict[str, Any] | None], Awaitable[tuple[int, Any]]]


@dataclass
class Service:
    """The example's web app, running, and the asyncjobs App its handlers use."""

    call: Call
    jobs: App

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.call("POST", path, body)

    async def get(self, path: str) -> Any:
        status, body = await self.call("GET", path, None)
        assert status == 200, body
        return body


@pytest.fixture(params=["fastapi", "aiohttp"])
async def service(
    request: pytest.FixtureRequest,
    app: App,
    redis_url: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Service]:
    await app.migrate()  # asyncjobs' schema (flags); the example's tables come from its start
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("ASYNCJOBS_DATABASE_URL", database_url)
    if request.param == "fastapi":
        api = fastapi_app.api
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:

                async def call_fastapi(method: str, path: str, body: Any) -> tuple[int, Any]:
                    response = await http.request(method, path, json=body)
                    return response.status_code, response.json()

                yield Service(call_fastapi, api.state.jobs)
    else:
        async with TestClient(TestServer(aiohttp_app.create_app())) as client:

            async def call_aiohttp(method: str, path: str, body: Any) -> tuple[int, Any]:
                response = await client.request(method, path, json=body)
                return response.status, await response.json()

            yield Service(call_aiohttp, client.app[aiohttp_app.JOBS])


async def test_a_request_s_job_is_captured_and_run_all_provisions_the_database(
    service: Service, redis: aioredis.Redis
) -> None:
    async with capture() as jobs:
        status, body = await service.post("/databases", {"name": "shop", "owner_email": "a@x.io"})
        assert (status, body["queued"]) == (202, True), body
        captured = jobs.assert_enqueued(create_database_job, body["id"])
        assert captured.job_id == body["job_id"]
        jobs.assert_not_enqueued(notify_owner_job)
        assert await redis.keys("*") == []  # nothing reached Redis
        done = await jobs.run_all()
    assert [(c.name, c.status) for c in done] == [
        ("create_database_job", "succeeded"),
        ("notify_owner_job", "succeeded"),  # enqueued by the first job, run too
    ]
    row = await service.get(f"/databases/{body['id']}")
    assert row["state"] == "ready"
    assert row["notified_at"] is not None
    assert await redis.keys("*") == []


async def test_the_kill_switch_rejects_at_enqueue_and_skips_at_run(service: Service) -> None:
    flags = service.jobs.flags
    async with capture() as jobs:
        _, before = await service.post("/databases", {"name": "early", "owner_email": "a@x.io"})
        assert before["queued"] is True
        await flags.enable("disable_create_database_job", reason="test")
        _, after = await service.post("/databases", {"name": "late", "owner_email": "b@x.io"})
        assert after["queued"] is False  # rejected as in production: not captured
        jobs.assert_enqueued(create_database_job, before["id"])
        jobs.assert_not_enqueued(create_database_job, after["id"])
        (skipped,) = await jobs.run_all()  # the copy queued before the flag is skipped
        assert skipped.status == "skipped"
    for database_id in (before["id"], after["id"]):
        assert (await service.get(f"/databases/{database_id}"))["state"] == "pending"
    assert {f.name: (f.enabled, f.rejected, f.skipped) for f in await flags.list()} == {
        "disable_create_database_job": (True, 1, 1)
    }


async def test_a_unique_job_s_lock_is_taken_in_redis_under_capture_and_freed_by_its_run(
    service: Service, redis: aioredis.Redis
) -> None:
    async with capture() as jobs:
        _, body = await service.post("/databases", {"name": "gone", "owner_email": "a@x.io"})
        await jobs.run_all()
        path = f"/databases/{body['id']}"
        first = await service.call("DELETE", path, None)
        second = await service.call("DELETE", path, None)
        assert (first[0], first[1]["queued"]) == (202, True)
        assert (second[0], second[1]["queued"]) == (202, False)  # the lock in Redis holds
        assert len(jobs.of(cleanup_database_job)) == 1
        assert len(await redis.keys("asyncjobs:unique:*")) == 1
        await jobs.run_all()
    assert (await service.get(path))["state"] == "deleted"
    assert await redis.keys("asyncjobs:unique:*") == []  # freed when the job succeeded
