"""capture(): enqueues kept in process instead of written to Redis, and run_all() running
them through the execution path; no server (tests/integration/test_capture.py has the
kill switch and uniqueness, which need one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import pytest

import asyncjobs
from asyncjobs import App, Settings
from asyncjobs.testing import CapturedJobHandle, RunLimitError, capture
from tests.helpers import Nowhere

registry = asyncjobs.Registry()
ran: list[tuple[str, Any]] = []


@asyncjobs.job(registry=registry)
async def add_job(ctx: dict[str, Any], a: int, b: int, *, note: str = "") -> int:
    ran.append(("add", (a, b, note, ctx["job_try"])))
    return a + b


@asyncjobs.job(registry=registry)
async def fan_out_job(ctx: dict[str, Any], n: int) -> None:
    ran.append(("fan_out", n))
    await ctx["asyncjobs"].enqueue_many(add_job, [(i, i) for i in range(n)])


@asyncjobs.job(registry=registry)
async def forever_job(ctx: dict[str, Any], n: int) -> None:
    await ctx["asyncjobs"].enqueue(forever_job, n + 1)


@asyncjobs.job(registry=registry, max_tries=3)
async def flaky_job(ctx: dict[str, Any], fail_until: int) -> int:
    ran.append(("flaky", ctx["job_try"]))
    if ctx["job_try"] < fail_until:
        raise ConnectionError(f"try {ctx['job_try']} failed")
    return int(ctx["job_try"])


@asyncjobs.job(registry=registry, unique_for=60)
async def unique_job(ctx: dict[str, Any], n: int) -> None:
    pass


@pytest.fixture(autouse=True)
def _clean() -> None:
    ran.clear()


@pytest.fixture
async def local_app() -> AsyncIterator[App]:  # no Redis, no PostgreSQL: nothing configured
    async with App(Settings(), registry=registry) as app:
        yield app


async def test_enqueues_go_through_the_client_chain_into_the_capture(local_app: App) -> None:
    seen: list[str] = []

    async def middleware(request: Any, call_next: Any) -> Any:
        seen.append(request.job_name)
        return None if request.args[0] == 0 else await call_next(request)

    local_app.client_middleware.append(middleware)
    async with capture() as jobs:
        job = await local_app.enqueue(add_job, 1, (2, 3), note="x", _job_id="add-1", _defer_by=60)
        assert isinstance(job, CapturedJobHandle)
        assert job.job_id == "add-1"
        assert (await job.status()).value == "queued"
        assert (
            await local_app.enqueue(add_job, 0, 1) is None
        )  # rejected by middleware: not captured
    assert seen == ["add_job", "add_job"]
    (captured,) = jobs.enqueued
    assert (captured.name, captured.args, captured.kwargs) == (
        "add_job",
        (1, [2, 3]),
        {"note": "x"},
    )
    assert captured.run_at > captured.enqueue_time  # _defer_by is recorded
    jobs.assert_enqueued(add_job, 1, (2, 3), note="x")  # compared as the job receives them
    jobs.assert_enqueued("add_job", ANY, ANY, note=ANY)
    jobs.assert_enqueued(add_job)


async def test_capture_makes_no_connection_and_checks_arguments_as_enqueue_does(
    nowhere: Nowhere,
) -> None:
    settings = Settings(redis_url=nowhere.redis_url, redis_timeout=0.5)
    async with App(settings, registry=registry) as app, capture() as jobs:
        assert await app.enqueue(add_job, 1, 2) is not None
        assert await app.enqueue_many(add_job, [(3, 4), (5, 6)]) != [None, None]
        with pytest.raises(asyncjobs.JobArgumentsError):
            await app.enqueue(add_job, 1)
        with pytest.raises(asyncjobs.JobSerializationError):
            await app.enqueue(add_job, 1, object())
        with pytest.raises(asyncjobs.UnknownOptionError):
            await app.enqueue(add_job, 1, 2, _jobid="x")
    assert nowhere.dialled == 0
    assert [c.args for c in jobs.enqueued] == [(1, 2), (3, 4), (5, 6)]


async def test_assertions_say_what_was_enqueued(local_app: App) -> None:
    async with capture() as jobs:
        with pytest.raises(AssertionError, match="nothing was enqueued"):
            jobs.assert_enqueued(add_job, 1, 2)
        await local_app.enqueue(add_job, 1, 2)
        with pytest.raises(AssertionError, match=r"expected add_job\(1, 3\).*add_job\(1, 2\)"):
            jobs.assert_enqueued(add_job, 1, 3)
        jobs.assert_not_enqueued(fan_out_job)
        jobs.assert_not_enqueued(add_job, 1, 3)
        with pytest.raises(AssertionError, match=r"no add_job .*found add_job\(1, 2\)"):
            jobs.assert_not_enqueued(add_job)
        with pytest.raises(TypeError, match="is not a job"):
            jobs.assert_enqueued(len)


async def test_run_all_runs_jobs_and_the_jobs_they_enqueue_until_none_is_left(
    local_app: App,
) -> None:
    async with capture() as jobs:
        first = await local_app.enqueue(fan_out_job, 3)
        assert first is not None
        finished = await jobs.run_all()
    assert [name for name, _ in ran] == ["fan_out", "add", "add", "add"]
    assert [c.status for c in finished] == ["succeeded"] * 4
    assert [c.result for c in jobs.of(add_job)] == [0, 2, 4]
    assert await first.result() is None
    assert (await first.status()).value == "complete"
    assert await jobs.run_all() == []  # nothing left


async def test_a_captured_job_has_not_run_until_run_all(local_app: App) -> None:
    async with capture():
        job = await local_app.enqueue(add_job, 1, 2)
        assert job is not None
        with pytest.raises(asyncjobs.AsyncJobsError, match="has not run yet"):
            await job.result()
        with pytest.raises(asyncjobs.AsyncJobsError, match="reads Redis"):
            await job.info()
    assert ran == []


async def test_retries_run_at_once_as_configured_or_not_at_all(local_app: App) -> None:
    async with capture() as jobs:
        await local_app.enqueue(flaky_job, 3)
        (done,) = await jobs.run_all()
        assert (done.status, done.tries, done.result) == ("succeeded", 3, 3)
        assert ran == [("flaky", 1), ("flaky", 2), ("flaky", 3)]

        ran.clear()
        await local_app.enqueue(flaky_job, 2)
        with pytest.raises(ConnectionError, match="try 1 failed") as failed:
            await jobs.run_all(retries=False)
        assert ran == [("flaky", 1)]
        assert "flaky_job(2)" in "\n".join(failed.value.__notes__)
        assert jobs.enqueued[-1].status == "failed"


async def test_a_job_that_fails_for_good_raises_from_run_all(local_app: App) -> None:
    async with capture() as jobs:
        await local_app.enqueue(flaky_job, 10)  # max_tries=3
        with pytest.raises(ConnectionError, match="try 3 failed"):
            await jobs.run_all()
    assert ran == [("flaky", 1), ("flaky", 2), ("flaky", 3)]


async def test_a_job_that_enqueues_itself_forever_stops_at_the_limit_and_says_so(
    local_app: App,
) -> None:
    async with capture() as jobs:
        await local_app.enqueue(forever_job, 0)
        with pytest.raises(RunLimitError, match=r"stopped after 50 job runs.*forever_job ×50"):
            await jobs.run_all(limit=50)
    assert len(jobs.enqueued) == 51
    assert jobs.enqueued[-1].status == "queued"  # the one left waits


async def test_a_job_id_still_waiting_is_a_duplicate_until_it_ran(local_app: App) -> None:
    async with capture() as jobs:
        assert await local_app.enqueue(add_job, 1, 2, _job_id="same") is not None
        assert await local_app.enqueue(add_job, 1, 2, _job_id="same") is None
        await jobs.run_all()
        assert await local_app.enqueue(add_job, 1, 2, _job_id="same") is not None
    assert len(jobs.enqueued) == 2


async def test_a_unique_job_under_capture_needs_redis_and_says_so(local_app: App) -> None:
    async with capture() as jobs:
        with pytest.raises(asyncjobs.ConfigurationError, match="ASYNCJOBS_REDIS_URL"):
            await local_app.enqueue(unique_job, 1)
    assert jobs.enqueued == []


async def test_the_default_app_is_captured_too_and_capture_ends_with_its_block() -> None:
    previous = asyncjobs.set_app(App(Settings(), registry=registry))
    try:
        async with capture() as outer:
            async with capture() as inner:
                await asyncjobs.enqueue(add_job, 1, 2)
            await asyncjobs.enqueue(add_job, 3, 4)
        assert [c.args for c in inner.enqueued] == [(1, 2)]
        assert [c.args for c in outer.enqueued] == [(3, 4)]
        with pytest.raises(asyncjobs.ConfigurationError):  # no capture: Redis is needed again
            await asyncjobs.enqueue(add_job, 5, 6)
    finally:
        app = asyncjobs.set_app(previous)
        assert app is not None
        await app.close()
