"""Bad input gets one clear error naming what to fix; nothing is half-written or lost."""

from __future__ import annotations

import json
import time

import pytest
import redis.asyncio as aioredis

from asyncjobs import App
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.helpers import log_events, wait_for_event


@pytest.mark.slow
async def test_a_payload_whose_arguments_do_not_fit_goes_to_the_dead_letters_untried(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    now_ms = int(time.time() * 1000)
    payload = {"t": None, "f": "record_args", "a": [1, 2, 3, 4], "k": {}, "et": now_ms}
    await redis.set("arq:job:misfit", json.dumps(payload))
    await redis.zadd("arq:queue", {"misfit": now_ms})
    with WorkerProcess(worker_env, cwd=ROOT) as worker:
        await wait_for_event(worker, "job.dead")
    (letter,) = await app.dead.list()
    assert (letter.reason, letter.job_id, letter.tries) == ("bad_arguments", "misfit", 1)
    assert "arguments do not fit job 'record_args'" in letter.error
    assert log_events(worker.lines, "job.retrying") == []
    assert await redis.llen("runs") == 0  # never ran
    assert await redis.zcard("arq:queue") == 0


@pytest.mark.slow
async def test_a_worker_warns_at_start_when_more_jobs_run_than_the_pool_has_connections(
    worker_env: dict[str, str],
) -> None:
    env = {**worker_env, "ASYNCJOBS_MAX_JOBS": "50", "ASYNCJOBS_DATABASE_POOL_SIZE": "5"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        (warning,) = await wait_for_event(worker, "database.pool_small")
    assert (warning["max_jobs"], warning["database_pool_size"]) == (50, 5)
    small = {**worker_env, "ASYNCJOBS_MAX_JOBS": "5", "ASYNCJOBS_DATABASE_POOL_SIZE": "5"}
    with WorkerProcess(small, cwd=ROOT) as quiet:
        pass
    assert log_events(quiet.lines, "worker.started")  # it started, without the warning
    assert log_events(quiet.lines, "database.pool_small") == []
    with WorkerProcess(worker_env, cwd=ROOT) as defaults:  # 500 jobs, 10 connections
        (said,) = await wait_for_event(defaults, "database.pool_small")
    assert (said["level"], said["max_jobs"], said["database_pool_size"]) == ("info", 500, 10)
