"""The execution path's layers, each run in process (no worker), against real servers
where a layer talks to one."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.worker import Retry
from structlog.testing import capture_logs

from asyncjobs import App, Backoff, ExecutionRequest
from asyncjobs._execution import (
    AdvisoryLock,
    Locked,
    Outcome,
    OutOfTries,
)
from asyncjobs._jobs import build_spec
from asyncjobs._uniqueness import advisory_key, unique_key
from asyncjobs.flags import execution_gate


async def _job(ctx: dict[str, Any], n: int = 0) -> int:
    return n


def _spec(**options: Any) -> Any:
    return build_spec(_job, name="layered_job", **options)


def _request(app: App, spec: Any, ctx: dict[str, Any] | None = None) -> ExecutionRequest:
    return ExecutionRequest(app, spec, {"job_id": "j1", "job_try": 1, **(ctx or {})}, (7,), {})


async def test_outcome_retries_a_failure_with_tries_left_after_a_backoff_delay(
    app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    spec = _spec(max_tries=3, backoff=Backoff(base=10, jitter=0.5))

    async def fails(request: ExecutionRequest) -> None:
        raise ValueError("flaky")

    with pytest.raises(Retry) as info:
        await Outcome(spec, app)(_request(app, spec, {"redis": redis}), fails)
    assert 5_000 <= (info.value.defer_score or 0) <= 10_000
    assert isinstance(info.value.__cause__, ValueError)
    assert await redis.exists("asyncjobs:first-failure:j1")
    assert await app.dead.list() == []


async def test_outcome_writes_the_dead_letter_on_the_last_try_and_reraises(
    app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    spec = _spec(max_tries=2)

    async def fails(request: ExecutionRequest) -> None:
        raise ValueError("for good")

    request = _request(app, spec, {"redis": redis, "job_try": 2})
    with pytest.raises(ValueError, match="for good"):
        await Outcome(spec, app)(request, fails)
    (letter,) = await app.dead.list()
    assert (letter.job_name, letter.job_id, letter.tries, letter.args) == (
        "layered_job",
        "j1",
        2,
        [7],
    )
    assert letter.error == "ValueError: for good"


async def test_a_retry_asked_on_the_last_try_ends_the_job_instead_of_scheduling_it(
    app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    spec = _spec(max_tries=1)

    async def asks(request: ExecutionRequest) -> None:
        raise Retry(defer=1)

    with pytest.raises(OutOfTries):
        await Outcome(spec, app)(_request(app, spec, {"redis": redis}), asks)
    assert len(await app.dead.list()) == 1


async def test_outcome_releases_a_uniqueness_lock_on_success(
    app: App, redis: aioredis.Redis
) -> None:
    spec = _spec(unique_for=60)
    key = unique_key(spec, (7,), {})
    assert key is not None
    await redis.set(key, "j1")

    async def ok(request: ExecutionRequest) -> int:
        return 42

    assert await Outcome(spec, app)(_request(app, spec, {"redis": redis}), ok) == 42
    assert not await redis.exists(key)


async def test_the_lock_layer_runs_the_job_holding_its_lock_and_refuses_when_held(
    app: App, database_url: str
) -> None:
    spec = _spec(lock=lambda n: f"layered:{n}")
    layer = AdvisoryLock(spec, app)
    seen: list[bool] = []

    async def inside(request: ExecutionRequest) -> str:
        conn = await asyncpg.connect(database_url)
        try:  # from another session, the lock is taken while the job runs
            key = advisory_key("layered:7")
            seen.append(not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
        finally:
            await conn.close()
        return "ran"

    assert await layer(_request(app, spec), inside) == "ran"
    assert seen == [True]
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", advisory_key("layered:7"))
        with pytest.raises(Locked) as info:
            await layer(_request(app, spec), inside)
        assert info.value.reason == "held"
    finally:
        await holder.close()


async def test_a_copy_the_kill_switch_skips_keeps_its_dead_letter_and_is_no_success(
    app: App, redis: aioredis.Redis
) -> None:
    """A dead letter retried while its job is stopped: the skipped copy did not run, so
    the dead letter stays (a success would remove it) and no job.succeeded is logged."""
    await app.migrate()
    spec = _spec(max_tries=1)

    async def fails(request: ExecutionRequest) -> None:
        raise ValueError("for good")

    with pytest.raises(ValueError, match="for good"):
        await Outcome(spec, app)(_request(app, spec, {"redis": redis}), fails)
    (letter,) = await app.dead.list()
    await app.flags.enable(spec.flag, actor="test")
    retried = _request(app, spec, {"redis": redis, "job_id": f"dead:{letter.id}:x"})

    async def must_not_run(request: ExecutionRequest) -> None:
        raise AssertionError("a stopped job ran")

    with capture_logs() as events:
        result = await Outcome(spec, app)(retried, lambda r: execution_gate(r, must_not_run))
    assert result is None
    assert retried.skipped
    assert [e["event"] for e in events if e["event"].startswith("job.")] == ["job.skipped"]
    assert [d.id for d in await app.dead.list()] == [letter.id]

    await app.flags.disable(spec.flag, actor="test")
    ran = _request(app, spec, {"redis": redis, "job_id": f"dead:{letter.id}:y"})
    assert await Outcome(spec, app)(ran, lambda r: execution_gate(r, _invoke_job)) == 7
    assert not ran.skipped
    assert await app.dead.list() == []  # a retried dead letter that succeeds is removed


async def _invoke_job(request: ExecutionRequest) -> Any:
    return await request.spec.invoke(request.ctx, request.args, request.kwargs)
