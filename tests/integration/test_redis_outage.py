"""Redis restarts under a running worker and a stream of enqueues."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from asyncjobs import App, RedisUnavailableError, Settings
from asyncjobs._services import EmbeddedRedis
from asyncjobs.testing import WorkerProcess, free_port
from tests.conftest import ROOT
from tests.helpers import Nowhere, bounded, eventually, log_events, wait_for_event
from tests.integration.test_metrics import aget, until_status
from tests.workerjobs import record_args

pytestmark = pytest.mark.slow

RECONNECTS = 20
"""Failed reconnects the worker rides out during the outage (each of its connections backs
off from 0.1 s, doubling, to 1 s between tries)."""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of this test's own, so it can be stopped and started again."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_enqueues_fail_fast_during_an_outage_and_the_worker_resumes_after(
    own_redis: EmbeddedRedis, worker_env: dict[str, str]
) -> None:
    env = {**worker_env, "ASYNCJOBS_REDIS_URL": own_redis.url}
    settings = Settings(redis_url=own_redis.url, redis_timeout=0.5, log_format="json")
    async with App(settings) as app:
        with WorkerProcess(env, cwd=ROOT) as worker:
            before = [await app.enqueue(record_args, f"before-{i}") for i in range(20)]
            assert all(before)
            await wait_for_event(worker, "job.succeeded", count=20)

            own_redis.stop()
            for i in range(5):
                with pytest.raises(RedisUnavailableError) as info:
                    async with bounded(5, "an enqueue failing within its bound"):
                        await app.enqueue(record_args, f"during-{i}")
                # "not enqueued" when nothing could be sent; "may or may not be enqueued"
                # when a pooled connection took the write before its close was noticed.
                said = str(info.value)
                assert re.search(r"Redis is unreachable|may or may not be enqueued", said)
            await wait_for_event(worker, "redis.unavailable", within=30)
            # An outage of many failed reconnects, not a blip: the port answers each
            # attempt by hanging up, and counts them.
            async with Nowhere(own_redis.port) as down:
                await eventually(
                    lambda: down.dialled >= RECONNECTS, what=f"{RECONNECTS} reconnect attempts"
                )
            assert worker.alive()

            own_redis.start()  # same port, empty: Redis keeps nothing on disk here
            after = [await app.enqueue(record_args, f"after-{i}") for i in range(20)]
            assert all(after)
            await wait_for_event(worker, "redis.reconnected", within=30)
            await wait_for_event(worker, "job.succeeded", count=40, within=30)
            assert worker.alive()

        client = aioredis.from_url(own_redis.url)
        ran = [json.loads(r)["args"][0] for r in await client.lrange("runs", 0, -1)]
        await client.aclose()
    assert sorted(ran) == sorted(f"after-{i}" for i in range(20))
    # The earlier runs were recorded in the Redis that was stopped (it kept nothing).
    assert len(log_events(worker.lines, "job.succeeded")) == 40


async def test_healthz_stays_200_while_redis_is_down_and_the_worker_waits_for_it(
    own_redis: EmbeddedRedis, worker_env: dict[str, str]
) -> None:
    """A Redis outage is no reason to restart a worker (a restart would not bring Redis
    back): /healthz answers 200 through an outage several health windows long."""
    port = free_port()
    env = {
        **worker_env,
        "ASYNCJOBS_REDIS_URL": own_redis.url,
        "ASYNCJOBS_METRICS_PORT": str(port),
        "ASYNCJOBS_HEARTBEAT": "0.5",  # a health window of 1.5 s
    }
    window = 1.5
    with WorkerProcess(env, cwd=ROOT) as worker:
        assert await until_status(port, "/healthz", 200) == (200, "ok\n")
        own_redis.stop()
        await wait_for_event(worker, "redis.unavailable", within=30)
        down_at = time.monotonic()
        answers: list[tuple[int, str]] = []

        async def outlasted_three_windows() -> bool:
            answers.append(await aget(port, "/healthz"))
            return time.monotonic() - down_at > 3 * window

        await eventually(outlasted_three_windows, within=30, what="an outage of three windows")
        assert worker.alive()
        assert {status for status, _ in answers} == {200}, answers
        own_redis.start()
        await wait_for_event(worker, "redis.reconnected", within=30)
        assert await until_status(port, "/healthz", 200) == (200, "ok\n")
