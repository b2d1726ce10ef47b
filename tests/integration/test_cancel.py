"""Cancelling jobs: queued, deferred and running; from code and from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job, JobStatus

import asyncjobs
from asyncjobs import App, CancelError, Settings
from asyncjobs.serializer import deserialize
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT, cli
from tests.corejobs import cancellable, echo
from tests.helpers import eventually, job_finished, log_events, wait_for_event


async def _status(redis_url: str, job_id: str) -> JobStatus:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_deserializer=deserialize)
    try:
        return await Job(job_id, pool, _deserializer=deserialize).status()
    finally:
        await pool.aclose()


async def test_a_queued_job_is_removed(app: App, redis: aioredis.Redis, redis_url: str) -> None:
    job = await app.enqueue(echo, 1)
    assert job is not None
    result = await app.cancel(job.job_id, reason="duplicate order", actor="ops")
    assert (result.outcome, result.queue) == ("cancelled", "arq:queue")
    assert await redis.zcard("arq:queue") == 0
    assert not await redis.exists(f"arq:job:{job.job_id}")
    assert await _status(redis_url, job.job_id) == JobStatus.not_found
    who = json.loads(await redis.get(f"asyncjobs:cancel:{job.job_id}") or b"{}")
    assert (who["actor"], who["reason"]) == ("ops", "duplicate order")
    again = await app.cancel(job.job_id)
    assert again.outcome == "not_found"
    assert "no job" in str(again)


async def test_a_deferred_job_is_removed_from_its_queue(app: App, redis: aioredis.Redis) -> None:
    job = await app.enqueue(echo, 2, _defer_by=3600, _queue_name="later")
    assert job is not None
    assert (await app.cancel(job.job_id)).outcome == "not_found"  # not a queue it knows
    result = await app.cancel(job.job_id, queue="later")
    assert (result.outcome, result.queue) == ("cancelled", "later")
    assert await redis.zcard("later") == 0


@pytest.mark.slow
async def test_a_running_job_stops_where_it_runs_and_is_neither_retried_nor_dead(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis, redis_url: str
) -> None:
    await app.migrate()
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.corejobs"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        job = await app.enqueue(cancellable, 1)
        assert job is not None
        await eventually(lambda: redis.llen("cancellable-started"), what="the job started")
        result = await app.cancel(job.job_id, reason="customer asked", actor="ann")
        assert result.outcome == "cancelling"
        await eventually(lambda: redis.llen("cancellable-stopped"), what="the body stopped")
        assert await redis.lrange("cancellable-stopped", 0, -1) == [b"1"]  # the body stopped
        await wait_for_event(worker, "job.cancelled")
        # Its outcome is written (the job finished, its result kept): a retry would be in
        # its queue from then on.
        await job_finished(redis, job.job_id)
    assert await redis.zcard("arq:queue") == 0
    assert await redis.llen("cancellable-started") == 1
    assert await app.dead.list() == []
    assert await _status(redis_url, job.job_id) == JobStatus.complete  # its result: cancelled
    cancelled = log_events(worker.lines, "job.cancelled")
    assert [(e["job_id"], e["actor"], e["reason"]) for e in cancelled] == [
        (job.job_id, "ann", "customer asked")
    ]
    assert log_events(worker.lines, "job.retrying") == []
    assert log_events(worker.lines, "job.failed") == []


async def test_module_level_cancel_uses_the_default_app(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", redis_url)
    job = await asyncjobs.enqueue("echo", 3)
    assert job is not None
    assert (await asyncjobs.cancel(job.job_id)).outcome == "cancelled"
    await asyncjobs.get_app().close()


@pytest.mark.parametrize(
    ("job_id", "message"),
    [
        ("", "non-empty"),
        ("  ", "non-empty"),
        ("x" * 2000, "at most 1024"),
        ("arq:job:abc", "a Redis key, not a job id: pass 'abc'"),
        (" abc", "surrounding spaces"),
    ],
)
async def test_a_malformed_id_is_one_clear_error_and_changes_nothing(
    app: App, redis: aioredis.Redis, job_id: str, message: str
) -> None:
    await app.enqueue(echo, 4, _job_id="abc")
    with pytest.raises(CancelError, match=message):
        await app.cancel(job_id)
    assert await redis.zcard("arq:queue") == 1


def test_the_cli_answers_an_unknown_id_in_one_line(redis_url: str) -> None:
    result = cli("jobs", "cancel", "nosuchjob", env={"ASYNCJOBS_REDIS_URL": redis_url})
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: no job nosuchjob is queued or running")


def test_the_cli_cancels_a_queued_job(redis_url: str) -> None:
    async def enqueue() -> str:
        async with App(Settings(redis_url=redis_url)) as app:
            job = await app.enqueue(echo, 5)
            assert job is not None
            return job.job_id

    job_id = asyncio.run(enqueue())
    env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_IMPORTS": "tests.corejobs"}
    result = cli("jobs", "cancel", job_id, "--reason", "test", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job {job_id} cancelled: removed from queue arq:queue"
    bad = cli("jobs", "cancel", "arq:job:x", env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: 'arq:job:x' is a Redis key, not a job id: pass 'x'"
    ]


def test_the_installed_command_imports_the_users_module_from_the_current_directory(
    tmp_path: Path, redis_url: str
) -> None:
    command = Path(sys.executable).parent / "asyncjobs"  # the console script, as installed
    package = tmp_path / "userapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(
        "import asyncjobs\n\n@asyncjobs.job\nasync def user_job(ctx):\n    return 1\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")},
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_IMPORTS": "userapp.jobs",
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(command), "jobs", "cancel", "nosuch"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1  # the module imported; the job id is unknown
    assert "cannot be imported" not in result.stderr
    assert result.stderr.startswith("Error: no job nosuch is queued or running")
