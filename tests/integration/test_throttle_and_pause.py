"""Incident controls against real servers and worker processes: a throttle shared by
three workers, a paused queue whose jobs wait and run after the resume, the audit trail,
and bad input that stores nothing (asyncjobs._controls)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from arq.jobs import Job, JobStatus

from asyncjobs import App, ControlError
from asyncjobs._arq import timestamp_ms
from asyncjobs._status import snapshot
from asyncjobs.testing import WorkerProcess
from asyncjobs.web import dashboard
from tests.conftest import ROOT, cli
from tests.helpers import eventually, log_events, wait_for_event
from tests.throttlejobs import billing_stamp, marker, throttled_stamp

pytestmark = pytest.mark.slow

RATE, TOTAL = 5, 30


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ASYNCJOBS_IMPORTS": "tests.throttlejobs"}


async def _starts(redis: aioredis.Redis, key: str, count: int) -> list[Any]:
    async def enough() -> list[bytes] | None:
        found: list[bytes] = await redis.lrange(key, 0, -1)  # type: ignore[misc]
        return found if len(found) >= count else None

    return [json.loads(raw) for raw in await eventually(enough, what=f"{count} in {key}")]


async def _deferred_job_seen_by_arq(redis: aioredis.Redis) -> bool:
    """Whether some job of the queue is deferred to later and arq's Job API says so."""
    now = timestamp_ms()
    later = await redis.zrangebyscore("arq:queue", f"({now}", "+inf")
    for job_id in later:
        if await Job(job_id.decode(), redis).status() == JobStatus.deferred:
            return True
    return False


async def test_a_throttle_over_three_workers_starts_every_job_once_at_the_rate_and_no_faster(
    env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    await app.flags.throttle("throttled_stamp", f"{RATE}/s", actor="oncall", reason="provider")
    workers = [WorkerProcess(env, cwd=ROOT) for _ in range(3)]
    try:
        for worker in workers:  # all three starting at once, then each ready
            worker.start(wait_ready=0)
        for worker in workers:
            await wait_for_event(worker, "worker.started")
        jobs = await app.enqueue_many(throttled_stamp, range(TOTAL))
        # While the rest wait, arq's Job API sees them as deferred jobs, not lost ones.
        await eventually(lambda: _deferred_job_seen_by_arq(redis), what="a deferred job")
        starts = await _starts(redis, "starts", TOTAL)
        await eventually(lambda: _queue_empty(redis), what="the queue drained")
    finally:
        for worker in workers:
            worker.stop()
    assert sorted(s["n"] for s in starts) == list(range(TOTAL))  # each once, none lost
    assert {s["job_id"] for s in starts} == {j.job_id for j in jobs if j is not None}
    # A deferral is no try: arq's counter was given back each time, so every job ran as
    # its first try (a counter that grew would make some of these 2 or more).
    assert [s["try"] for s in starts] == [1] * TOTAL
    times = sorted(s["at"] for s in starts)
    # The behaviour under test is this window: at most RATE starts in any second, so the
    # 30th starts about (30 / 5 - 1) = 5 s after the first; never sooner.
    assert 4.8 <= times[-1] - times[0] <= 8.0, times
    # The limiter grants at most RATE per second; a job's first line runs a little after
    # its grant (0.4 s of margin for a busy machine), so no 0.6 s holds more than RATE.
    for i, first in enumerate(times):
        in_window = [t for t in times[i:] if t < first + 0.6]
        assert len(in_window) <= RATE, (first, in_window)
    assert sum(len(log_events(w.lines, "job.succeeded")) for w in workers) == TOTAL
    assert await redis.keys("arq:retry:*") == []
    history = [e for e in await app.flags.history() if e.name == "throttle:throttled_stamp"]
    assert [(e.new_value, e.detail, e.actor, e.reason) for e in history] == [
        (True, f"{RATE}/s", "oncall", "provider")
    ]


async def _queue_empty(redis: aioredis.Redis) -> bool:
    return int(await redis.zcard("arq:queue")) == 0


async def test_a_paused_queues_jobs_wait_while_other_queues_run_and_start_after_resume(
    env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    with WorkerProcess(env, cwd=ROOT) as worker:
        assert log_events(worker.lines, "worker.started")[0]["queues"] == ["arq:queue", "billing"]
        paused = cli(
            "queues", "pause", "billing", "--reason", "db migration", "--actor", "ana", env=env
        )
        assert paused.returncode == 0, paused.stderr
        await wait_for_event(worker, "worker.queues_paused", paused=["billing"])
        await app.enqueue_many(billing_stamp, range(3))
        # Bounded observation: the worker claims from both queues in one call, so once
        # a job enqueued after the billing jobs ran, a claim saw them ready and left them.
        await app.enqueue(marker, 1)
        await _starts(redis, "markers", 1)
        await app.enqueue(marker, 2)
        await _starts(redis, "markers", 2)
        assert await redis.llen("billing-starts") == 0
        status = (await snapshot(app)).as_dict()  # what `asyncjobs status --json` prints
        billing = next(q for q in status["queues"] if q["name"] == "billing")
        assert (billing["paused"], billing["ready"], billing["running"]) == (True, 3, 0)
        assert [(p["queue"], p["by"], p["reason"]) for p in status["paused_queues"]] == [
            ("billing", "ana", "db migration")
        ]
        resumed = await app.flags.resume_queue("billing", actor="ana", reason="done")
        assert (resumed.was, resumed.now, resumed.changed) == ("paused", None, True)
        assert sorted(int(n) for n in await _starts(redis, "billing-starts", 3)) == [0, 1, 2]
        await wait_for_event(worker, "worker.queues_paused", paused=[], resumed=["billing"])
    history = await app.flags.history("pause:billing")
    assert [(e.new_value, e.actor, e.reason) for e in history] == [
        (False, "ana", "done"),
        (True, "ana", "db migration"),
    ]


async def test_a_malformed_rate_or_an_unknown_job_is_one_clear_error_and_stores_nothing(
    app: App, database_url: str, env: dict[str, str]
) -> None:
    await app.migrate()
    for rate, says in [
        ("10/x", "unknown period 'x'"),
        ("0/s", "at least 1"),
        ("-1/s", "at least 1"),
        ("abc", "is not a rate"),
    ]:
        with pytest.raises(ControlError, match=says):
            await app.flags.throttle("throttled_stamp", rate)
        # On the command line a malformed rate is a wrong command line: status 2.
        done = await asyncio.to_thread(cli, "jobs", "throttle", "throttled_stamp", rate, env=env)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("Error: ")
        assert says in line
    with pytest.raises(ControlError, match="no job named 'no_such_job'"):
        await app.flags.throttle("no_such_job", "10/s")
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM asyncjobs.controls") == 0
        assert await conn.fetchval("SELECT count(*) FROM asyncjobs.flag_history") == 0
    finally:
        await conn.close()


async def test_status_and_the_dashboard_show_a_paused_queue_and_a_throttle(
    app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    await app.flags.pause_queue("billing", actor="ana", reason="db migration")
    await app.flags.throttle("throttled_stamp", "10/m", actor="bo", reason="provider 429s")
    await app.enqueue(billing_stamp, 1)
    status = (await snapshot(app)).as_dict()
    # Other test modules may have registered jobs on queues of their own; these two count.
    paused = {q["name"]: q["paused"] for q in status["queues"]}
    assert (paused["arq:queue"], paused["billing"]) == (False, True)
    assert [name for name, on in paused.items() if on] == ["billing"]
    assert [
        (t["job"], t["rate"], t["limit"], t["period_s"], t["by"]) for t in status["throttles"]
    ] == [("throttled_stamp", "10/m", 10, 60, "bo")]
    transport = httpx.ASGITransport(app=dashboard(app))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as client:
        overview = (await client.get("/")).text
        queues = (await client.get("/queues")).text
        billing = (await client.get("/queues/billing")).text
        default = (await client.get("/queues/arq:queue")).text
        audit = await client.get("/flags/pause:billing")
        trail = (await client.get("/flags")).text
    for page in (overview, queues):
        row = re.search(r"<tr><td><a href=\"[^\"]*/queues/billing\">billing</a>(.*?)</tr>", page)
        assert row is not None
        assert 'class="paused"' in row[1]
        assert page.count('class="paused"') == 1  # arq:queue runs
    assert re.search(r">throttled_stamp</a></td><td class=\"n\">10/m</td>", overview)
    assert "provider 429s" in overview
    assert 'class="paused"' in billing
    assert "db migration" in billing
    assert 'class="paused"' not in default
    assert audit.status_code == 200
    assert "db migration" in audit.text
    assert "off → on 10/m</td><td>bo</td><td>provider 429s" in trail
