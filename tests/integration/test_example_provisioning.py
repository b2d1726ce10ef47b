"""The example service (examples/provisioning), in-process over HTTP against real services.

The web app runs in this process behind httpx's ASGI transport, with its real
lifespan; a real worker process runs its jobs and reconcilers. So the example
cannot rot: handler → enqueue → worker → row ready, and the operator's tools.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from asyncjobs import App
from asyncjobs.testing import WorkerProcess
from examples.provisioning import web
from tests.conftest import ROOT
from tests.helpers import eventually, wait_for_event

EXAMPLE_ENV = {
    "ASYNCJOBS_IMPORTS": "examples.provisioning.jobs",
    "PROVISIONING_RECONCILE_EVERY": "2",
    "PROVISIONING_BACKUP_EVERY": "2",
    "PROVISIONING_WORK": "0.2",
}


@pytest.fixture
async def client(
    app: App, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The example's web app with its lifespan, configured like its worker."""
    await app.migrate()  # asyncjobs' schema; the example's own tables come from its lifespan
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("ASYNCJOBS_DATABASE_URL", database_url)
    async with web.app.router.lifespan_context(web.app):
        transport = httpx.ASGITransport(app=web.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
            yield client


@pytest.fixture
def worker(worker_env: dict[str, str]) -> Any:
    with WorkerProcess({**worker_env, **EXAMPLE_ENV}, cwd=ROOT) as worker:
        yield worker


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    await eventually(check, within=within, interval=0.05, what=what)


async def _stats(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/stats")
    assert response.status_code == 200
    return dict(response.json())


async def test_the_app_creates_its_tables_at_start_so_a_first_request_works(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/databases", json={"name": "first", "owner_email": "a@b.io"})
    assert created.status_code == 202, created.text


async def test_bad_requests_get_a_clear_400_and_write_nothing(
    client: httpx.AsyncClient,
) -> None:
    cases = [
        ("/databases", b"not json", "must be a JSON object"),
        ("/databases", b'{"name": "shop"}', "missing field.*owner_email"),
        ("/databases", b'{"name": "Shop DB", "owner_email": "a@b.io"}', "name must be"),
        ("/databases/bulk", b'{"count": 0, "prefix": "x", "owner_email": "a@b.io"}', "count"),
    ]
    for path, body, message in cases:
        response = await client.post(path, content=body)
        assert response.status_code == 400, response.text
        assert re.search(message, response.json()["error"]), response.text
    assert (await client.get("/databases/12345")).status_code == 404
    assert (await _stats(client))["created"] == 0


@pytest.mark.slow
async def test_a_database_goes_from_request_to_ready_notified_backed_up_and_deleted(
    client: httpx.AsyncClient, app: App, worker: WorkerProcess
) -> None:
    created = await client.post("/databases", json={"name": "shop", "owner_email": "ann@x.io"})
    assert created.status_code == 202
    body = created.json()
    assert body["state"] == "pending"
    assert body["queued"] is True
    url = f"/databases/{body['id']}"

    async def ready_and_notified() -> bool:
        row = (await client.get(url)).json()
        return bool(row["state"] == "ready" and row["notified_at"])

    await _until(ready_and_notified, "the row is ready and its owner mailed")
    await _until(lambda: _has(client, "backups", 1), "the backup reconciler backed the database up")

    # The second delete arrives while the first's cleanup waits or runs (the worker starts
    # it within milliseconds; it takes PROVISIONING_WORK and holds its uniqueness until done).
    first = await client.delete(url)
    second = await client.delete(url)
    assert first.json()["queued"] is True
    assert second.json()["queued"] is False  # unique_for: one cleanup at a time
    assert "already scheduled" in second.json()["note"]
    await _until(lambda: _state(client, url, "deleted"), "the cleanup deleted it")
    stats = await _stats(client)
    assert stats["provisioned"] == 1  # one side effect, however many copies ran


async def _has(client: httpx.AsyncClient, key: str, at_least: int) -> bool:
    return (await _stats(client))[key] >= at_least


async def _state(client: httpx.AsyncClient, url: str, state: str) -> bool:
    return bool((await client.get(url)).json()["state"] == state)


@pytest.mark.slow
async def test_switched_off_creates_wait_as_pending_and_the_reconciler_finishes_them(
    client: httpx.AsyncClient, app: App, worker: WorkerProcess
) -> None:
    # The flag disable_<job> switched on stops the job (Flipper's convention).
    await app.flags.enable("disable_create_database_job", actor="test")
    refused = await client.post("/databases", json={"name": "a", "owner_email": "a@x.io"})
    assert refused.status_code == 202
    assert refused.json()["queued"] is False
    bulk = await client.post(
        "/databases/bulk", json={"count": 30, "prefix": "load", "owner_email": "ops@x.io"}
    )
    assert bulk.json() == {"created": 30, "queued": 0}
    # A reconciler run finds the 31 rows: its enqueues are refused too.
    await wait_for_event(
        worker, "reconciler.finished", job="create_database_job", rows=31, rejected=31
    )
    assert (await _stats(client))["pending"] == 31
    await app.flags.disable("disable_create_database_job", actor="test")
    await _until(lambda: _has(client, "ready", 31), "the reconciler enqueued every pending row")
    stats = await _stats(client)
    assert stats["provisioned"] == stats["provisioned_databases"] == 31


@pytest.mark.slow
async def test_an_unmailable_owner_is_a_dead_letter_until_fixed_and_retried(
    client: httpx.AsyncClient, app: App, worker: WorkerProcess
) -> None:
    created = await client.post("/databases", json={"name": "x", "owner_email": "nobody"})
    database_id = created.json()["id"]
    await _until(lambda: _dead(app, 1), "the mail job became a dead letter")
    (letter,) = await app.dead.list()
    assert letter.job_name == "notify_owner_job"
    assert "not an email address" in letter.error
    assert letter.tries == 1  # give_up_on: no retry can fix an address
    row = (await client.get(f"/databases/{database_id}")).json()
    assert row["notified_at"] is None
    assert "cannot mail" in row["notify_error"]

    fixed = await client.patch(f"/databases/{database_id}", json={"owner_email": "x@x.io"})
    assert fixed.status_code == 200
    assert fixed.json()["notify_error"] is None
    assert await app.dead.retry(letter.id) is not None

    async def notified() -> bool:
        return bool((await client.get(f"/databases/{database_id}")).json()["notified_at"])

    await _until(notified, "the retried job mailed the owner")
    await _until(lambda: _no_dead(app), "the dead letter was removed once its retry succeeded")


async def _no_dead(app: App) -> bool:
    return not await app.dead.list()


async def _dead(app: App, count: int) -> bool:
    return len(await app.dead.list()) >= count


@pytest.mark.slow
def test_the_narrated_demo_runs_green() -> None:
    """`nox -s demo`'s program, whole: its own servers, worker and web app; exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.provisioning.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in (
        "$ asyncjobs jobs disable create_database_job",
        "10 enqueues refused",
        "FLUSHALL:",
        "$ asyncjobs dead retry",
        "Every row reached its final state",
    ):
        assert step in done.stdout
