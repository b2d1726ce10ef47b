"""What asyncjobs borrows from arq and redis-py, held against the real thing.

Everything borrowed lives in ``asyncjobs/_arq.py``; these tests pin it: the
commands we pack equal redis-py's own packing, the settings arq's command reads
from ``WorkerSettings``, and the result format arq's ``Job`` reads, for a job
that succeeded, failed, or was cancelled. And no other module imports arq or
redis-py. Here, the part that needs a worker and servers: arq's ``Job`` reading
what asyncjobs' worker wrote (tests/unit/test_arq_contract.py has the rest).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job, JobStatus

from asyncjobs import App, JobFailed
from asyncjobs.serializer import deserialize
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.corejobs import echo, fails_twice, slow_first_time
from tests.helpers import eventually


@pytest.mark.slow
async def test_arqs_job_reads_succeeded_failed_and_cancelled_results(
    worker_env: dict[str, str], app: App, redis_url: str, redis: aioredis.Redis
) -> None:
    await app.migrate()
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.corejobs", "ASYNCJOBS_KEEP_RESULT": "60"}
    arq_pool = await create_pool(RedisSettings.from_dsn(redis_url), job_deserializer=deserialize)
    try:
        with WorkerProcess(env, cwd=ROOT):
            ok = await app.enqueue(echo, [1, "two"])
            failed = await app.enqueue(fails_twice, 3)
            slow = await app.enqueue(slow_first_time, 1)
            assert ok is not None
            assert failed is not None
            assert slow is not None
            theirs = Job(ok.job_id, arq_pool, _deserializer=deserialize)
            assert await theirs.result(timeout=20, poll_delay=0.05) == [1, "two"]

            theirs = Job(failed.job_id, arq_pool, _deserializer=deserialize)
            with pytest.raises(JobFailed) as info:
                await theirs.result(timeout=20, poll_delay=0.05)
            assert (info.value.error_class, info.value.message) == ("ValueError", "bad value 3")
            assert str(info.value) == "ValueError: bad value 3"
            result = await theirs.result_info()
            assert result is not None
            assert result.success is False
            assert isinstance(result.result, JobFailed)

            theirs = Job(slow.job_id, arq_pool, _deserializer=deserialize)
            await eventually(
                lambda: _is_running(theirs), within=20, what="the slow job is in progress"
            )
            assert await theirs.abort(timeout=10, poll_delay=0.05) is True
    finally:
        await arq_pool.aclose()
    assert [d.job_id for d in await app.dead.list()] == [failed.job_id]  # not the aborted one


async def _is_running(job: Job) -> bool:
    return await job.status() == JobStatus.in_progress
