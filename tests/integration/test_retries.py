"""Retries with backoff and jitter, then dead letters in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import App, Backoff, JobDefinitionError, Settings
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT, cli
from tests.retryjobs import doomed, fixable, flaky, give_up, secret, slow_once


@given(
    base=st.floats(0.01, 100),
    factor=st.floats(1, 10),
    cap_mult=st.floats(1, 1000),
    jitter=st.floats(0, 1),
    n=st.integers(1, 60),
)
def test_backoff_stays_in_bounds_under_the_cap_and_grows_in_expectation(
    base: float, factor: float, cap_mult: float, jitter: float, n: int
) -> None:
    policy = Backoff(base=base, factor=factor, cap=base * cap_mult, jitter=jitter)
    low, high = policy.bounds(n)
    assert 0 <= low <= high <= policy.cap
    assert low >= high * (1 - jitter) - 1e-9
    for _ in range(20):
        assert low - 1e-9 <= policy.delay(n) <= high + 1e-9
    next_low, next_high = policy.bounds(n + 1)
    assert (next_low + next_high) / 2 >= (low + high) / 2 - 1e-9  # non-decreasing mean


def test_the_default_policy_is_documented_and_capped() -> None:
    policy = Backoff()
    assert policy.bounds(1) == (7.5, 15.0)
    assert policy.bounds(2) == (15.0, 30.0)
    assert policy.bounds(25) == (3 * 3600.0, 6 * 3600.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tries": 0}, "max_tries"),
        ({"backoff": object()}, "delay"),
        ({"retry_on": "ValueError"}, "exception classes"),
        ({"give_up_on": (KeyError, 3)}, "exception classes"),
    ],
)
def test_bad_retry_options_are_refused(options: dict[str, object], message: str) -> None:
    async def f(ctx: dict[str, object]) -> None: ...

    with pytest.raises(JobDefinitionError, match=message):
        asyncjobs.job(registry=asyncjobs.Registry(), **options)(f)  # type: ignore[call-overload]


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as app:
        await app.migrate()
        yield app


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ASYNCJOBS_IMPORTS": "tests.retryjobs"}


async def _runs(redis: aioredis.Redis, job: str, count: int, wait: float = 20) -> list[float]:
    deadline = time.monotonic() + wait
    while await redis.llen(f"runs:{job}") < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return [float(x) for x in await redis.lrange(f"runs:{job}", 0, -1)]


def _events(worker: WorkerProcess, name: str) -> list[dict[str, object]]:
    return [json.loads(x) for x in worker.lines if f'"{name}"' in x]


pytestmark = pytest.mark.slow


async def test_a_job_failing_twice_then_succeeding_runs_three_times_with_growing_delays(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(flaky, 2)
        times = await _runs(redis, "flaky", 3)
        worker.wait_for('"event": "job.succeeded"')
        await asyncio.sleep(0.5)
    assert len(times) == 3
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    assert first_gap >= 0.4
    assert second_gap >= 0.8
    assert second_gap > first_gap
    retrying = _events(worker, "job.retrying")
    assert [(e["job_try"], e["delay_s"], e["error"]) for e in retrying] == [
        (1, 0.4, "RuntimeError: not yet"),
        (2, 0.8, "RuntimeError: not yet"),
    ]
    assert await migrated.dead.list() == []


async def test_a_job_that_always_fails_ends_as_one_dead_letter_with_its_traceback(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        job = await migrated.enqueue(doomed, 7)
        worker.wait_for('"event": "job.dead"')
        runs = await _runs(redis, "doomed", 3)
    assert job is not None
    assert len(runs) == 3
    (letter,) = await migrated.dead.list()
    assert (letter.job_name, letter.job_id, letter.tries) == ("doomed", job.job_id, 3)
    assert (letter.args, letter.kwargs, letter.redacted) == ([7], {}, False)
    assert letter.error == "ValueError: doomed 7"
    assert "Traceback" in letter.traceback
    assert "raise ValueError" in letter.traceback
    assert letter.first_failed_at < letter.last_failed_at
    await redis.flushall()  # a Redis flush does not lose it
    assert [d.id for d in await migrated.dead.list("doomed")] == [letter.id]


async def test_give_up_on_sends_a_job_straight_to_the_dead_set(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(give_up)
        worker.wait_for('"event": "job.dead"')
    assert len(await _runs(redis, "give_up", 1)) == 1
    (letter,) = await migrated.dead.list()
    assert (letter.tries, letter.error) == (1, "KeyError: 'no such account'")


async def test_a_timeout_is_a_failure_that_retries(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(slow_once)
        worker.wait_for('"event": "job.succeeded"')
    assert len(await _runs(redis, "slow_once", 2)) == 2
    (retrying,) = _events(worker, "job.retrying")
    assert retrying["error"] == "JobTimeout: the job ran longer than its timeout of 0.3s"


async def test_dead_retry_runs_it_again_and_removes_the_record_on_success(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(fixable, 42)
        worker.wait_for('"event": "job.dead"')
        (letter,) = await migrated.dead.list()
        await redis.set("fixed", 1)
        again = await migrated.dead.retry(letter.id)
        assert again is not None
        assert again.job_id.startswith(f"dead:{letter.id}:")
        worker.wait_for('"event": "job.succeeded"')
        await asyncio.sleep(0.3)
    assert len(await _runs(redis, "fixable", 2)) == 2
    assert await migrated.dead.list() == []


async def test_redacted_arguments_are_not_kept(migrated: App, env: dict[str, str]) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(secret, "123-45-6789")
        worker.wait_for('"event": "job.dead"')
    (letter,) = await migrated.dead.list()
    assert (letter.args, letter.kwargs, letter.redacted) == (None, None, True)
    assert "123-45-6789" not in letter.traceback + letter.error
    assert not any("123-45-6789" in line for line in worker.lines)
    with pytest.raises(asyncjobs.AsyncJobsError, match="redacted"):
        await migrated.dead.retry(letter.id)


async def test_dead_letter_cli_in_a_subprocess(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(doomed, 1)
        await migrated.enqueue(fixable, 2)
        worker.wait_for('"event": "job.dead"', count=2)
        listing = cli("dead", "list", env=env)
        assert listing.returncode == 0, listing.stderr
        assert "doomed" in listing.stdout
        assert "ValueError: doomed 1" in listing.stdout
        letters = {d.job_name: d for d in await migrated.dead.list()}
        shown = cli("dead", "show", str(letters["doomed"].id), env=env)
        assert "arguments:     [1] {}" in shown.stdout
        assert "raise ValueError" in shown.stdout
        only = cli("dead", "list", "--job", "fixable", env=env)
        assert "fixable" in only.stdout
        assert "doomed" not in only.stdout

        await redis.set("fixed", 1)
        retried = cli("dead", "retry", str(letters["fixable"].id), env=env)
        assert retried.returncode == 0, retried.stderr
        assert "re-enqueued dead letter" in retried.stdout
        worker.wait_for('"event": "job.succeeded"')
        await asyncio.sleep(0.3)
    assert [d.job_name for d in await migrated.dead.list()] == ["doomed"]

    bad_id = cli("dead", "show", "abc", env=env)
    assert bad_id.returncode == 2
    assert "'abc' is not a valid integer" in bad_id.stderr
    missing = cli("dead", "show", "99999", env=env)
    assert missing.returncode == 1
    assert "no dead letter with id 99999" in missing.stderr
    bad_age = cli("dead", "purge", "--older-than", "30x", env=env)
    assert bad_age.returncode == 2
    assert "'30x' is not a duration" in bad_age.stderr
    kept = cli("dead", "purge", "--older-than", "30d", env=env)
    assert "no dead letters match" in kept.stdout
    refused = cli("dead", "purge", env=env)  # not a terminal, no --yes: nothing deleted
    assert refused.returncode == 1
    assert "pass --yes to confirm" in refused.stderr
    dry = cli("dead", "purge", "--dry-run", env=env)
    assert "1 dead letter(s) would be purged" in dry.stdout
    gone = cli("dead", "purge", "--yes", env=env)
    assert "purged 1 dead letter(s)" in gone.stdout
    assert await migrated.dead.list() == []
