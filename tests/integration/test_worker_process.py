"""A real worker: `arq asyncjobs.WorkerSettings` in a subprocess, fed through asyncjobs.enqueue."""

from __future__ import annotations

import json
import time

import pytest
import redis.asyncio as aioredis

from asyncjobs import App
from asyncjobs.testing import WorkerProcess, free_port
from tests.conftest import ROOT, run_module
from tests.helpers import eventually, log_events, recorded_runs, wait_for_event
from tests.workerjobs import InvoiceJob, always_fails, record_args

pytestmark = pytest.mark.slow


async def test_worker_runs_function_and_class_jobs_with_their_arguments(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_LOG_LEVEL": "debug"}  # job.started is a debug event
    with WorkerProcess(env, cwd=ROOT) as worker:
        fn_job = await app.enqueue(record_args, 1, [2, "three"], note="hello")
        cls_job = await app.enqueue(InvoiceJob, 42)
        done = await recorded_runs(redis, 2)
        await wait_for_event(worker, "job.succeeded", count=2)
    assert fn_job is not None
    assert cls_job is not None
    by_job = {r["job"]: r for r in done}
    assert by_job["record_args"] == {
        "job": "record_args",
        "args": [1, [2, "three"]],
        "kwargs": {"note": "hello"},
        "job_id": fn_job.job_id,
    }
    assert by_job["invoice_job"]["args"] == [42]
    assert by_job["invoice_job"]["job_id"] == cls_job.job_id
    events = log_events(worker.lines)
    started = [e for e in events if e["event"] == "job.started"]
    assert {e["job"] for e in started} == {"record_args", "invoice_job"}
    assert all({"job_id", "job_try"} <= e.keys() for e in started)
    succeeded = [e for e in events if e["event"] == "job.succeeded"]
    assert {e["job_id"] for e in succeeded} == {fn_job.job_id, cls_job.job_id}
    assert all(e["duration_ms"] >= 0 and e["job_try"] == 1 for e in succeeded)


async def test_at_info_level_a_job_logs_one_line_and_arqs_own_lines_are_quiet(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    with WorkerProcess(worker_env, cwd=ROOT) as worker:
        job = await app.enqueue(record_args, "quiet")
        await recorded_runs(redis, 1)
        await wait_for_event(worker, "job.succeeded")
    assert job is not None
    mentions = [line for line in worker.lines if job.job_id in line]
    assert len(mentions) == 1
    assert json.loads(mentions[0])["event"] == "job.succeeded"


async def test_payloads_the_worker_cannot_run_go_to_the_dead_letters_raw(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    now_ms = int(time.time() * 1000)
    # Not JSON, JSON of the wrong shape, a pickle from a plain arq client, and an unknown job.
    garbage = {
        "notjson": b"{this is not json",
        "wrongshape": b"[1, 2, 3]",
        "pickled": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
        "unknown": json.dumps(
            {"t": 1, "f": "no_such_job", "a": [], "k": {}, "et": now_ms}
        ).encode(),
    }
    for job_id, payload in garbage.items():
        await redis.set(f"arq:job:{job_id}", payload)
        await redis.zadd("arq:queue", {job_id: now_ms})
    with WorkerProcess(worker_env, cwd=ROOT) as worker:
        await wait_for_event(worker, "job.dead", count=4)
        job = await app.enqueue(record_args, "after garbage")
        done = await recorded_runs(redis, 1)
        assert worker.alive()
    assert job is not None
    assert done[0]["args"] == ["after garbage", None]
    events = log_events(worker.lines, "job.dead")
    assert sorted((e["job_id"], e["reason"]) for e in events) == [
        ("notjson", "bad_payload"),
        ("pickled", "bad_payload"),
        ("unknown", "unknown_job"),
        ("wrongshape", "bad_payload"),
    ]
    assert await redis.zcard("arq:queue") == 0
    letters = {d.job_id: d for d in await app.dead.list()}
    assert set(letters) == set(garbage)
    assert letters["notjson"].payload == b"{this is not json"
    assert letters["pickled"].payload == garbage["pickled"]
    assert letters["unknown"].job_name == "no_such_job"
    assert json.loads(letters["unknown"].payload or b"") == json.loads(garbage["unknown"])
    assert all(d.reason in ("bad_payload", "unknown_job") for d in letters.values())


async def test_a_failing_job_and_a_failing_middleware_do_not_stop_the_worker(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.workerjobs,tests.brokenmiddleware"}
    with WorkerProcess(env, cwd=ROOT) as worker:
        await app.enqueue(always_fails, 1)
        await app.enqueue(record_args, "explode")  # the server middleware raises for this one
        await app.enqueue(record_args, "fine")
        done = await recorded_runs(redis, 2)
        await wait_for_event(worker, "job.failed")  # always_fails has max_tries=1
        await wait_for_event(worker, "job.retrying")  # the middleware's failure will be retried
        assert worker.alive()
    assert sorted(str(r["args"][0]) for r in done) == ["1", "fine"]
    failed = log_events(worker.lines, "job.failed") + log_events(worker.lines, "job.retrying")
    assert sorted(e["error"] for e in failed) == [
        "RuntimeError: boom 1",
        "RuntimeError: middleware refused 'explode'",
    ]


def test_worker_with_no_jobs_registered_says_to_set_imports(redis_url: str) -> None:
    result = run_module("arq", "asyncjobs.WorkerSettings", env={"ASYNCJOBS_REDIS_URL": redis_url})
    assert result.returncode != 0
    assert "no jobs are registered: set ASYNCJOBS_IMPORTS" in result.stderr


async def test_jobs_run_while_postgres_is_unreachable(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    env = {**worker_env, "ASYNCJOBS_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/db"}
    with WorkerProcess(env, cwd=ROOT):
        await app.enqueue(record_args, "no database needed")
        done = await recorded_runs(redis, 1)
    assert done[0]["args"][0] == "no database needed"


async def test_worker_settings_subclass_overrides_arq_options(
    worker_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    with WorkerProcess(worker_env, settings="tests.customsettings.Custom", cwd=ROOT) as worker:
        await app.enqueue(record_args, "custom")
        await recorded_runs(redis, 1)
        await eventually(
            lambda: any("custom startup hook ran" in x for x in worker.lines),
            what="its startup hook printed",
        )
    (started,) = log_events(worker.lines, "worker.started")
    assert started["event"] == "worker.started"
    assert await redis.get("custom-max-jobs") == b"7"
