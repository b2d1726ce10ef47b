from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.worker import Worker, func

import asyncjobs
from asyncjobs import (
    App,
    EnqueueRequest,
    Settings,
)
from asyncjobs.serializer import deserialize
from tests.conftest import ROOT
from tests.workerjobs import InvoiceJob, record_args


async def test_enqueue_writes_arqs_job_format(app: App, redis: aioredis.Redis) -> None:
    job = await app.enqueue(record_args, 1, [2, 3], note="hi")
    assert job is not None
    payload = json.loads(await redis.get(f"arq:job:{job.job_id}"))
    assert payload["f"] == "record_args"
    assert payload["a"] == [1, [2, 3]]
    assert payload["k"] == {"note": "hi"}
    assert payload["t"] is None
    assert abs(payload["et"] - time.time() * 1000) < 60_000
    assert await redis.zscore("arq:queue", job.job_id) is not None
    ttl_ms = await redis.pttl(f"arq:job:{job.job_id}")
    assert 86_000_000 < ttl_ms <= 86_400_000  # arq's rule: a day past the run time


async def test_class_jobs_enqueue_by_class_or_name(app: App, redis: aioredis.Redis) -> None:
    by_class = await app.enqueue(InvoiceJob, 7)
    by_name = await app.enqueue("invoice_job", 8)
    assert by_class is not None
    assert by_name is not None
    assert await redis.zcard("arq:queue") == 2


async def test_duplicate_job_id_returns_none_and_keeps_the_first(
    app: App, redis: aioredis.Redis
) -> None:
    first = await app.enqueue(record_args, 1, _job_id="invoice-42")
    second = await app.enqueue(record_args, 2, _job_id="invoice-42")
    assert first is not None
    assert first.job_id == "invoice-42"
    assert second is None
    assert json.loads(await redis.get("arq:job:invoice-42"))["a"] == [1, None][:1]


async def test_with_options_enqueues_with_the_options_given_beforehand(
    app: App, redis: aioredis.Redis
) -> None:
    before = time.time() * 1000
    job = await app.with_options(_job_id="welcome-42", _defer_by=90).enqueue(
        record_args, 42, note="hi"
    )
    assert job is not None
    assert job.job_id == "welcome-42"
    payload = json.loads(await redis.get("arq:job:welcome-42"))
    assert (payload["a"], payload["k"]) == ([42], {"note": "hi"})
    score = await redis.zscore("arq:queue", "welcome-42")
    assert score is not None
    assert score >= before + 90_000
    with pytest.raises(asyncjobs.InvalidOptionError, match="_job_id given both"):
        await app.with_options(_job_id="a").enqueue(record_args, 1, _job_id="b")
    assert await redis.zcard("arq:queue") == 1


SCRIPT_THAT_RUNS_TWICE = """
import asyncio, asyncjobs
from tests.workerjobs import record_args
for n in range(2):  # two asyncio.run(): two event loops, one default App each
    job = asyncio.run(asyncjobs.enqueue(record_args, n))
    print(job.job_id)
"""


async def test_the_default_app_serves_each_event_loop_it_is_used_from(
    redis_url: str, database_url: str, redis: aioredis.Redis
) -> None:
    async with App(Settings(redis_url=redis_url, database_url=database_url)) as app:
        await app.migrate()
    env = {**os.environ, "ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": database_url}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SCRIPT_THAT_RUNS_TWICE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    ids = run.stdout.split()
    assert len(ids) == 2
    assert {m.decode() for m in await redis.zrange("arq:queue", 0, -1)} == set(ids)
    mine = App(Settings(redis_url=redis_url, database_url=database_url))
    asyncjobs.set_app(mine)  # an App given to set_app is kept, whatever the loop
    assert asyncjobs.get_app() is mine


async def test_deferred_and_expiring_jobs_get_arqs_score_and_ttl(
    app: App, redis: aioredis.Redis
) -> None:
    before = time.time() * 1000
    job = await app.enqueue(record_args, 1, _defer_by=timedelta(seconds=90), _expires=120)
    assert job is not None
    score = await redis.zscore("arq:queue", job.job_id)
    assert before + 89_000 <= score <= time.time() * 1000 + 90_000
    assert 110_000 < await redis.pttl(f"arq:job:{job.job_id}") <= 120_000
    at = datetime.now(UTC) + timedelta(hours=1)
    later = await app.enqueue(record_args, 2, _defer_until=at, _queue_name="other")
    assert later is not None
    assert await redis.zscore("other", later.job_id) == pytest.approx(at.timestamp() * 1000, abs=2)


async def test_client_middleware_runs_outermost_first_and_can_reject(
    settings: Settings, redis: aioredis.Redis
) -> None:
    seen: list[str] = []

    async def outer(request: EnqueueRequest, call_next: Any) -> Any:
        seen.append("outer:" + request.job_name)
        return await call_next(request)

    async def gate(request: EnqueueRequest, call_next: Any) -> Any:
        seen.append("gate")
        if request.args[0] == "stop":
            return None
        request.options["_job_id"] = f"id-{request.args[0]}"
        return await call_next(request)

    async with App(settings, client_middleware=[outer, gate]) as app:
        assert await app.enqueue(record_args, "stop") is None
        assert await redis.dbsize() == 0
        job = await app.enqueue(record_args, "go")
    assert job is not None
    assert job.job_id == "id-go"
    assert seen == ["outer:record_args", "gate", "outer:record_args", "gate"]


async def test_jobs_enqueued_by_asyncjobs_run_on_arqs_own_worker(
    app: App, redis_url: str, redis: aioredis.Redis
) -> None:
    """Compatibility: arq's unmodified Worker runs what asyncjobs wrote."""
    ran: list[tuple[Any, ...]] = []

    async def plain(ctx: dict[str, Any], a: Any, b: Any = None, *, note: str = "") -> str:
        ran.append((a, b, note, ctx["job_try"]))
        return "ok"

    await app.enqueue(record_args, 1, note="x")
    await app.enqueue(record_args, 2, 3, _job_try=2)
    worker = Worker(
        functions=[func(plain, name="record_args")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        job_deserializer=deserialize,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    assert sorted(ran) == [(1, None, "x", 1), (2, 3, "", 2)]
    assert await redis.zcard("arq:queue") == 0


async def test_module_level_enqueue_uses_the_default_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis: aioredis.Redis
) -> None:
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", redis_url)
    job = await asyncjobs.enqueue("record_args", 5)
    assert job is not None
    assert asyncjobs.get_app().settings.redis_url == redis_url
    await asyncjobs.get_app().close()
    assert await redis.exists(f"arq:job:{job.job_id}") == 1


async def test_client_middleware_added_after_the_first_enqueue_takes_effect(
    app: App, redis: aioredis.Redis
) -> None:
    assert await app.enqueue(record_args, "before") is not None  # the chain is built now

    async def refuse(request: Any, call_next: Any) -> None:
        return None

    app.client_middleware.append(refuse)
    assert await app.enqueue(record_args, "after") is None  # the chain was built anew
    assert await app.enqueue_many(record_args, ["bulk"]) == [None]
    app.client_middleware.remove(refuse)
    assert await app.enqueue(record_args, "again") is not None
    assert await redis.zcard("arq:queue") == 2
