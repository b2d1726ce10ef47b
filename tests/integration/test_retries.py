"""Retries with backoff and jitter, then dead letters in PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import App, Settings
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT, cli
from tests.helpers import eventually, job_finished, log_events, wait_for_event
from tests.retryjobs import doomed, fixable, flaky, give_up, secret, slow_once


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as app:
        await app.migrate()
        yield app


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ASYNCJOBS_IMPORTS": "tests.retryjobs"}


async def _runs(redis: aioredis.Redis, job: str, count: int, wait: float = 20) -> list[float]:
    """Wait until ``job`` ran ``count`` times; return when each run started."""

    async def ran() -> bool:
        return int(await redis.llen(f"runs:{job}")) >= count

    await eventually(ran, within=wait, what=f"{job} ran {count} time(s)")
    return [float(x) for x in await redis.lrange(f"runs:{job}", 0, -1)]


pytestmark = pytest.mark.slow


async def test_a_job_failing_twice_then_succeeding_runs_three_times_with_growing_delays(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        job = await migrated.enqueue(flaky, 2)
        assert job is not None
        await _runs(redis, "flaky", 3)
        await wait_for_event(worker, "job.succeeded")
        await job_finished(redis, job.job_id)  # nothing more can run
        times = [float(x) for x in await redis.lrange("runs:flaky", 0, -1)]
    assert len(times) == 3
    retrying = log_events(worker.lines, "job.retrying")
    assert [(e["job_try"], e["delay_s"], e["error"]) for e in retrying] == [
        (1, 0.4, "RuntimeError: not yet"),
        (2, 0.8, "RuntimeError: not yet"),
    ]  # growing delays...
    for (before, after), retry in zip(itertools.pairwise(times), retrying, strict=True):
        assert after - before >= retry["delay_s"]  # ...each waited out before the next try
    assert await migrated.dead.list() == []


async def test_a_job_that_always_fails_ends_as_one_dead_letter_with_its_traceback(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        job = await migrated.enqueue(doomed, 7)
        await wait_for_event(worker, "job.dead")
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
        await wait_for_event(worker, "job.dead")
    assert len(await _runs(redis, "give_up", 1)) == 1
    (letter,) = await migrated.dead.list()
    assert (letter.tries, letter.error) == (1, "KeyError: 'no such account'")


async def test_a_timeout_is_a_failure_that_retries(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(slow_once)
        await wait_for_event(worker, "job.succeeded")
    assert len(await _runs(redis, "slow_once", 2)) == 2
    (retrying,) = log_events(worker.lines, "job.retrying")
    assert retrying["error"] == "JobTimeout: the job ran longer than its timeout of 0.3s"


async def test_dead_retry_runs_it_again_and_removes_the_record_on_success(
    migrated: App, env: dict[str, str], redis: aioredis.Redis
) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(fixable, 42)
        await wait_for_event(worker, "job.dead")
        (letter,) = await migrated.dead.list()
        await redis.set("fixed", 1)
        again = await migrated.dead.retry(letter.id)
        assert again is not None
        assert again.job_id.startswith(f"dead:{letter.id}:")
        await wait_for_event(worker, "job.succeeded")
        await job_finished(redis, again.job_id)
    assert len(await _runs(redis, "fixable", 2)) == 2
    assert await migrated.dead.list() == []


async def test_redacted_arguments_are_not_kept(migrated: App, env: dict[str, str]) -> None:
    with WorkerProcess(env, cwd=ROOT) as worker:
        await migrated.enqueue(secret, "123-45-6789")
        await wait_for_event(worker, "job.dead")
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
        await migrated.enqueue(doomed, "3\nsecond line")  # an error of two lines
        await wait_for_event(worker, "job.dead", count=3)
        listing = cli("dead", "list", env=env)
        assert listing.returncode == 0, listing.stderr
        assert "doomed" in listing.stdout
        assert "ValueError: doomed 1" in listing.stdout
        assert "ValueError: doomed 3 second line" in listing.stdout  # one row each
        assert len(listing.stdout.strip().splitlines()) == 1 + 3
        (two_lines,) = [d for d in await migrated.dead.list() if d.args == ["3\nsecond line"]]
        await migrated.dead.remove(two_lines.id)  # the rest of the test counts the other two
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
        (succeeded,) = await wait_for_event(worker, "job.succeeded", job="fixable")
        await job_finished(redis, succeeded["job_id"])
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
