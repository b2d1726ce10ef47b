"""The dashboard through HTTP (httpx on the ASGI app), against real Redis and PostgreSQL.

Every page with real data; each action changes what it should; the refusals
(no CSRF token, no actor, read-only); escaping; the 404, 400 and outage pages.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as aioredis
import structlog

from asyncjobs import App, Settings
from asyncjobs._arq import RETRY_PREFIX
from asyncjobs._liveness import beat, registration
from asyncjobs._retries import DeadLetters
from asyncjobs._throughput import minute_key
from asyncjobs.runner import Worker
from asyncjobs.testing import ServiceProcess, free_port
from asyncjobs.web import dashboard
from tests import recjobs
from tests.conftest import ROOT, cli
from tests.corejobs import billing_job, cancellable, echo, stamp
from tests.helpers import eventually
from tests.recjobs import pending_rows  # noqa: F401 -- registers the reconciler

XSS = "<script>alert(1)</script>"


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


async def _client(app: App, **options: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=dashboard(app, **options))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://dash.test")


@pytest.fixture
async def client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    await app.migrate()
    async with await _client(app) as client:
        yield client


async def _dead_letter(app: App, value: object) -> int:
    return await DeadLetters(app).record(
        job_name="echo",
        job_id="original-1",
        queue=app.settings.queue_name,
        args=(value,),
        kwargs={},
        redact=False,
        tries=3,
        exc=RuntimeError("the mail server said no"),
        first_failed_at=None,
    )


async def _post(client: httpx.AsyncClient, page: str, action: str, **form: str) -> httpx.Response:
    """Submit a form of ``page`` as a browser would: with the page's CSRF token."""
    token = _token((await client.get(page)).text)
    return await client.post(action, data={"csrf": token, **form})


async def test_every_page_shows_what_the_servers_hold(
    app: App, client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    queued = await app.enqueue(billing_job, 41)
    deferred = await app.enqueue(billing_job, 42, _defer_by=3600)
    assert queued
    assert deferred
    await app.flags.enable("disable_stamp", actor="ops", reason="the printer is on fire")
    dead_id = await _dead_letter(app, "hello")
    now_minute = int(datetime.now(UTC).timestamp() // 60)
    await redis.hset(minute_key(now_minute), mapping={"succeeded": 7, "failed": 2})

    overview = await client.get("/")
    assert overview.status_code == 200
    text = overview.text
    assert "billing" in text
    assert "stamp" in text
    assert "the printer is on fire" in text
    assert "7 succeeded, 2 failed" in text
    assert "<svg" in text
    assert "<rect" in text
    assert "No worker is alive" in text
    assert "setInterval" in text  # refreshes itself

    jobs = (await client.get("/jobs")).text
    assert "STOPPED" in jobs
    assert "billing_job" in jobs
    job = (await client.get("/jobs/stamp")).text
    assert "the printer is on fire" in job
    assert "ops" in job
    assert "tries" in job

    queue = (await client.get("/queues/billing")).text
    assert queued.job_id in queue
    assert deferred.job_id in queue
    assert "42" in queue
    assert "Run now" in queue
    assert "(deferred)" in queue
    assert "billing" in (await client.get("/queues")).text
    assert "No job is running" in (await client.get("/running")).text

    dead = (await client.get("/dead")).text
    assert f'id="dead-{dead_id}"' in dead
    assert "the mail server said no" in dead
    letter = (await client.get(f"/dead/{dead_id}")).text
    assert "Traceback" in letter
    assert "original-1" in letter
    assert "pending_rows" in (await client.get("/reconcilers")).text
    flags = (await client.get("/flags")).text
    assert "disable_stamp" in flags
    assert "the printer is on fire" in flags
    assert "ops" in (await client.get("/flags/disable_stamp")).text


async def test_stopping_a_job_in_the_dashboard_rejects_its_enqueues(
    app: App, client: httpx.AsyncClient
) -> None:
    done = await _post(client, "/jobs", "/jobs/stamp/stop", reason="bad data upstream")
    assert done.status_code == 303
    assert await app.enqueue(stamp, 1) is None
    (event,) = await app.flags.history("disable_stamp")
    assert event.new_value is True
    assert event.reason == "bad data upstream"
    assert event.actor == "web@127.0.0.1"
    assert "STOPPED" in (await client.get("/jobs/stamp")).text

    assert (await _post(client, "/jobs/stamp", "/jobs/stamp/resume")).status_code == 303
    assert await app.enqueue(stamp, 2) is not None


async def test_stopping_without_a_reason_is_refused(app: App, client: httpx.AsyncClient) -> None:
    refused = await _post(client, "/jobs", "/jobs/stamp/stop", reason="  ")
    assert refused.status_code == 400
    assert await app.enqueue(stamp, 1) is not None


async def test_a_retried_dead_letter_runs_and_leaves_the_list(
    app: App, client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    dead_id = await _dead_letter(app, "again")
    done = await _post(client, "/dead", f"/dead/{dead_id}/retry")
    assert done.status_code == 303
    assert "retried" in done.headers["location"]
    worker = Worker(app, burst=True, handle_signals=False, poll_delay=0.01)
    await asyncio.wait_for(worker.run(), 30)
    assert worker.jobs_complete == 1
    assert await DeadLetters(app).counts() == {}
    assert f'id="dead-{dead_id}"' not in (await client.get("/dead")).text
    # The worker's counts reach the chart.
    assert "1 succeeded" in (await client.get("/")).text


async def test_dead_letters_are_deleted_retried_and_purged_by_filter(
    app: App, client: httpx.AsyncClient
) -> None:
    store = DeadLetters(app)
    first, second, third = [await _dead_letter(app, n) for n in range(3)]
    assert (await _post(client, "/dead", f"/dead/{first}/delete")).status_code == 303
    assert {d.id for d in await store.list()} == {second, third}

    confirm = await client.get("/dead/purge?job=echo")
    assert "deletes <b>2</b>" in confirm.text
    unconfirmed = await client.post("/dead/purge", data={"csrf": _token(confirm.text)})
    assert unconfirmed.status_code == 400
    assert len(await store.list()) == 2
    assert (await _post(client, "/dead/purge?job=echo", "/dead/purge", job="echo",
                        confirm="yes")).status_code == 303  # fmt: skip
    assert await store.list() == []

    fourth = await _dead_letter(app, 4)
    assert (await _post(client, "/dead", "/dead/retry-all", job="echo")).status_code == 303
    assert (await store.get(fourth)).id == fourth  # kept until the retried job succeeds
    assert await app.enqueue(echo, 5)  # the retried one is in the queue beside it
    size = await (await app.redis()).zcard(app.settings.queue_name)
    assert size == 2


async def test_a_queued_job_is_deleted_and_a_deferred_one_run_now(
    app: App, client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    queued = await app.enqueue(billing_job, 1)
    deferred = await app.enqueue(billing_job, 2, _defer_by=3600)
    assert queued
    assert deferred
    with structlog.testing.capture_logs() as logged:
        deleted = await _post(
            client, "/queues/billing", f"/queues/billing/jobs/{queued.job_id}/delete"
        )
        assert deleted.status_code == 303
        now = await _post(client, "/queues/billing", f"/queues/billing/jobs/{deferred.job_id}/now")
        assert now.status_code == 303
    assert await redis.zscore("billing", queued.job_id) is None
    score = await redis.zscore("billing", deferred.job_id)
    assert score is not None
    assert score <= datetime.now(UTC).timestamp() * 1000
    actions = [e for e in logged if e["event"] == "dashboard.action"]
    assert [(e["action"], e["actor"]) for e in actions] == [
        ("job.delete", "web@127.0.0.1"),
        ("job.run_now", "web@127.0.0.1"),
    ]
    gone = await _post(client, "/queues/billing", f"/queues/billing/jobs/{queued.job_id}/delete")
    assert gone.status_code == 404


async def test_a_queue_is_read_page_by_page(app: App, client: httpx.AsyncClient) -> None:
    await app.enqueue_many(billing_job, [(n,) for n in range(120)])
    first = (await client.get("/queues/billing")).text
    third = (await client.get("/queues/billing?page=3")).text
    assert "120 jobs · page 1 of 3" in first
    assert first.count("<code>") == 2 * 50
    assert "page 3 of 3" in third
    assert third.count("<code>") == 2 * 20


async def test_running_shows_the_job_a_live_worker_runs(
    app: App, client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    job = await app.enqueue(cancellable, 7)
    assert job is not None
    worker = Worker(app, handle_signals=False, poll_delay=0.01, heartbeat=0.2)
    running = asyncio.create_task(worker.run())
    try:

        async def listed() -> str | None:
            page = (await client.get("/running")).text
            return page if job.job_id in page else None

        page = await eventually(listed, within=15, what="the running job listed")
        assert "cancellable" in page
        assert _try_cell(page, job.job_id) == "1"  # the worker counted its claim
        queue = (await client.get(f"/queues/{app.settings.queue_name}")).text
        assert _try_cell(queue, job.job_id) == "1"
        assert 'class="running">running<' in _row(queue, job.job_id)
        assert "UTC" in page  # when the worker started it
        assert "1 / " in (await client.get("/")).text  # the worker alive, running one job
    finally:
        worker.stop(now=True)
        await asyncio.wait_for(running, 30)


def _row(page: str, job_id: str) -> str:
    """The cells of ``job_id``'s row in a queue or the Running page, after its id."""
    row = re.search(rf"<tr><td><code>{re.escape(job_id)}</code></td>(.*?)</tr>", page, re.S)
    assert row is not None, f"no row for {job_id}"
    return row.group(1)


def _try_cell(page: str, job_id: str) -> str:
    """The Try cell of ``job_id``'s row (the fourth cell: id, job, arguments, try)."""
    cells: list[str] = re.findall(r"<td[^>]*>(.*?)</td>", _row(page, job_id), re.S)
    return cells[2]


async def test_the_try_column_shows_the_try_a_queued_job_will_run_as(
    app: App, client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fresh = await app.enqueue(billing_job, 1)
    retried = await app.enqueue(billing_job, 2)
    assert fresh
    assert retried
    await redis.set(RETRY_PREFIX + retried.job_id, 2)  # claimed twice, waiting for its third
    page = (await client.get("/queues/billing")).text
    assert _try_cell(page, fresh.job_id) == "1"
    assert _try_cell(page, retried.job_id) == "3"
    assert "the try each job will run as" in page.lower()


async def test_a_job_a_live_worker_holds_is_marked_running_without_run_now(
    app: App, client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    held = await app.enqueue(billing_job, 1, _defer_by=3600)
    waiting = await app.enqueue(billing_job, 2, _defer_by=3600)
    assert held
    assert waiting
    fields = registration("host:123:abc", ("billing",), 0.0, [held.job_id], 4)
    await beat(redis, "host:123:abc", fields, 60_000)
    page = (await client.get("/queues/billing")).text
    held_row, waiting_row = _row(page, held.job_id), _row(page, waiting.job_id)
    assert 'class="running">running<' in held_row
    assert "Run now" not in held_row
    assert "running" not in waiting_row
    assert "Run now" in waiting_row


async def test_a_reconcilers_last_run_is_shown(app: App, client: httpx.AsyncClient) -> None:
    async def pending_rows_row() -> str:
        # Other modules of the suite register reconcilers of their own: read this one's row.
        page = (await client.get("/reconcilers")).text
        row = re.search(r"<tr><td>pending_rows</td>.*?</tr>", page, re.S)
        assert row is not None
        return row.group(0)

    assert "no run in the last week" in await pending_rows_row()
    pool = await app.db()
    await pool.execute(recjobs.SCHEMA)
    await pool.execute("INSERT INTO databases (state) VALUES ('pending'), ('pending'), ('ready')")
    result = await app.reconcilers.get("pending_rows").run(app)
    assert result.enqueued == 2
    row = await pending_rows_row()
    assert "no run in the last week" not in row
    cells = re.findall(r'<td class="n">([^<]*)</td>', row)
    assert cells[:3] == ["2", "2", "0"]


async def test_a_reconciler_is_run_now(app: App, client: httpx.AsyncClient) -> None:
    done = await _post(client, "/reconcilers", "/reconcilers/pending_rows/run")
    assert done.status_code == 303
    assert "enqueued" in done.headers["location"]
    assert await (await app.redis()).zcard(app.settings.queue_name) == 1


async def test_a_post_without_the_csrf_token_is_refused(
    app: App, client: httpx.AsyncClient
) -> None:
    await client.get("/")  # has the cookie, sends no field
    assert (await client.post("/jobs/stamp/stop", data={"reason": "x"})).status_code == 403
    forged = await client.post("/jobs/stamp/stop", data={"reason": "x", "csrf": "a.b"})
    assert forged.status_code == 403
    assert await app.enqueue(stamp, 1) is not None


async def test_auth_names_the_actor_and_refuses_with_401(app: App) -> None:
    await app.migrate()

    async def auth(request: httpx.Request) -> str | None:
        return request.headers.get("x-operator")  # type: ignore[no-any-return]

    async with await _client(app, auth=auth) as client:
        refused = await client.get("/")
        assert refused.status_code == 401
        assert "<title>401 Unauthorized · asyncjobs</title>" in refused.text
        assert "<h1>401 Unauthorized</h1>" in refused.text
        assert "<style>" in refused.text
        client.headers["x-operator"] = "alice"
        done = await _post(client, "/jobs", "/jobs/stamp/stop", reason="alice's reason")
        assert done.status_code == 303
    (event,) = await app.flags.history("disable_stamp")
    assert event.actor == "alice"


async def test_read_only_shows_no_actions_and_refuses_posts(app: App) -> None:
    await app.migrate()
    await _dead_letter(app, 1)
    await app.enqueue(billing_job, 1, _defer_by=60)
    async with await _client(app, read_only=True) as client:
        for page in ("/", "/jobs", "/jobs/stamp", "/queues/billing", "/dead", "/reconcilers"):
            html = (await client.get(page)).text
            assert 'method="post"' not in html, page
        purge = await client.get("/dead/purge")
        assert purge.status_code == 403
        assert "read-only" in purge.text
        assert "This deletes" not in purge.text
        client.cookies.set("asyncjobs_csrf", "x")
        refused = await client.post("/jobs/stamp/stop", data={"reason": "x", "csrf": "x"})
        assert refused.status_code == 403
    assert await app.enqueue(stamp, 1) is not None


async def test_what_the_servers_hold_is_escaped(app: App, client: httpx.AsyncClient) -> None:
    await app.enqueue(billing_job, XSS)  # type: ignore[call-overload]  # text shown on the pages
    await _dead_letter(app, XSS)
    await app.flags.enable("disable_stamp", actor=XSS, reason=XSS)
    for page in ("/", "/queues/billing", "/dead", "/flags", "/jobs/stamp"):
        html = (await client.get(page)).text
        assert XSS not in html, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page


@pytest.mark.parametrize(
    ("path", "status", "said"),
    [
        ("/jobs/no_such_job", 404, "no job named &#39;no_such_job&#39;"),
        ("/dead/999999", 404, "no dead letter 999999"),
        ("/dead/abc", 404, "no dead letter"),
        ("/flags/no_such_flag", 404, "no flag named &#39;no_such_flag&#39;"),
        ("/queues/no-such-queue", 404, "no queue named"),
        ("/queues/billing?page=abc", 400, "page must be a whole number"),
        ("/queues/billing?page=0", 400, "page must be a whole number"),
        ("/dead?job=%3Cbad%3E", 400, "is not a job name"),
        ("/no/such/page", 404, "There is no dashboard page at /no/such/page"),
    ],
)
async def test_bad_input_is_a_page_that_says_what(
    client: httpx.AsyncClient, path: str, status: int, said: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == status
    assert said in answer.text


@pytest.mark.parametrize(
    ("path", "heading"),
    [
        ("/jobs/no_such_job", "404 Not Found"),
        ("/queues/billing?page=abc", "400 Bad Request"),
        ("/no/such/page", "404 Not Found"),
    ],
)
async def test_an_error_page_has_a_title_and_a_heading_with_its_status(
    client: httpx.AsyncClient, path: str, heading: str
) -> None:
    html = (await client.get(path)).text
    assert f"<title>{heading} · asyncjobs</title>" in html
    assert f"<h1>{heading}</h1>" in html


async def test_a_dead_letter_that_cannot_be_retried_is_a_409_page_saying_why(
    app: App, client: httpx.AsyncClient
) -> None:
    dead_id = await DeadLetters(app).record(
        job_name="echo", job_id="secret-1", queue=app.settings.queue_name, args=("pw",),
        kwargs={}, redact=True, tries=1, exc=RuntimeError("no"), first_failed_at=None,
    )  # fmt: skip
    refused = await _post(client, "/dead", f"/dead/{dead_id}/retry")
    assert refused.status_code == 409
    assert "<h1>409 Conflict</h1>" in refused.text
    assert "was redacted" in refused.text


async def test_only_notices_the_dashboard_issued_are_shown(
    app: App, client: httpx.AsyncClient
) -> None:
    planted = "Session expired, log in at http://evil.example"
    for query in ({"msg": planted}, {"msg": planted, "sig": "0" * 32}):
        page = (await client.get("/jobs", params=query)).text
        assert "evil.example" not in page
        assert 'class="notice"' not in page
    done = await _post(client, "/jobs", "/jobs/stamp/stop", reason="bad data")
    shown = (await client.get(done.headers["location"])).text
    assert '<div class="notice" role="status">stamp stopped</div>' in shown


async def test_empty_pages_say_so(app: App, client: httpx.AsyncClient) -> None:
    assert "No flags yet." in (await client.get("/flags")).text
    await app.enqueue(billing_job, 1)
    past = await client.get("/queues/billing?page=999")
    assert past.status_code == 404
    assert "no page 999 of queue &#39;billing&#39;: it has 1 page" in past.text
    nothing = (await client.get("/dead/purge?job=nope")).text
    assert "Nothing to purge" in nothing
    assert "Yes, purge" not in nothing


async def test_counts_of_one_are_singular(app: App, client: httpx.AsyncClient) -> None:
    await app.enqueue(billing_job, 1)
    assert "1 job · page 1 of 1" in (await client.get("/queues/billing")).text
    await _dead_letter(app, 1)
    one = (await client.get("/dead/purge?job=echo")).text
    assert "deletes <b>1</b> dead letter of" in one
    retried = await _post(client, "/dead", "/dead/retry-all", job="echo")
    assert "msg=1+dead+letter+retried" in retried.headers["location"]


async def test_an_outage_is_a_banner_naming_the_server() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(
        redis_url=dead,
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        redis_timeout=0.5,
        database_timeout=0.5,
    )
    async with App(settings) as app, await _client(app) as client:
        for page in (
            "/",
            "/queues/billing",
            "/running",
            "/dead",
            "/flags",
            "/jobs",
            "/reconcilers",
        ):
            answer = await client.get(page)
            assert answer.status_code == 200, page
            if page in ("/", "/queues/billing", "/running"):
                assert answer.text.count("Redis is unreachable") == 1, page
                assert "RedisUnavailableError" not in answer.text, page
            if page in ("/", "/dead", "/flags", "/jobs", "/reconcilers"):
                assert "PostgreSQL is unreachable" in answer.text, page
        token = client.cookies["asyncjobs_csrf"]
        for action, server in [
            ("/jobs/stamp/stop", "PostgreSQL"),
            ("/dead/retry-all", "PostgreSQL"),
            ("/queues/billing/jobs/some-id/now", "Redis"),
            ("/reconcilers/pending_rows/run", "Redis"),
        ]:
            answer = await client.post(action, data={"csrf": token, "reason": "r"})
            assert answer.status_code == 503, action
            assert f"{server} is unreachable" in answer.text, action
            assert "<h1>503 Service Unavailable</h1>" in answer.text, action
            assert f"{server} is unreachable: nothing changed." in answer.text, action
            assert ".." not in answer.text, action
            assert "What it holds is not shown" not in answer.text, action


async def test_asyncjobs_web_serves_the_dashboard_on_a_loopback_address(
    app: App, redis_url: str, database_url: str
) -> None:
    await app.migrate()
    await app.enqueue(billing_job, 1)
    port = free_port()
    env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url,
           "ASYNCJOBS_IMPORTS": "tests.corejobs", "PYTHONPATH": str(ROOT)}  # fmt: skip
    argv = [sys.executable, "-m", "asyncjobs", "web", "--port", str(port), "--read-only"]
    with ServiceProcess(argv, env, ready="asyncjobs dashboard on") as served:
        assert any("no authentication: listening on this machine only" in line
                   for line in served.lines)  # fmt: skip

        async def page() -> httpx.Response | None:
            async with httpx.AsyncClient() as client:
                try:
                    return await client.get(f"http://127.0.0.1:{port}/jobs")
                except httpx.TransportError:
                    return None

        answer = await eventually(page, within=30, what="the dashboard answers")
        assert answer.status_code == 200
        assert "billing_job" in answer.text
        assert 'method="post"' not in answer.text


def test_asyncjobs_web_on_a_taken_port_says_so_in_one_line() -> None:
    for host, shown in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as taken:
            taken.bind((host, 0))
            taken.listen()
            port = taken.getsockname()[1]
            refused = cli("web", "--host", host, "--port", str(port),
                          env={"ASYNCJOBS_REDIS_URL": "redis://x"})  # fmt: skip
        assert refused.returncode == 1
        assert refused.stdout == ""  # no "dashboard on" line first
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"Error: --port {port}: cannot listen on {shown}:{port}")


def test_asyncjobs_web_refuses_a_host_other_machines_reach() -> None:
    refused = cli("web", "--host", "0.0.0.0", env={"ASYNCJOBS_REDIS_URL": "redis://x"})
    assert refused.returncode == 1
    assert "loopback address only" in refused.stderr
