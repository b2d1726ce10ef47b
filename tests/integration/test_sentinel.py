"""Redis Sentinel: a master killed under a producer and a worker, and URLs that cannot work.

Each test starts its own master, replica and three Sentinels (:mod:`tests.sentinels`)
and stops them; PostgreSQL is the suite's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from asyncjobs import App, EnqueueOutcomeUnknownError, RedisUnavailableError, Settings
from asyncjobs.testing import WorkerProcess, free_port
from tests.conftest import ROOT, cli
from tests.helpers import bounded, eventually, log_events, wait_for_event
from tests.recjobs import SCHEMA, create_database, pending_rows
from tests.sentinels import SERVICE, SentinelSet

pytestmark = pytest.mark.slow

REC = pending_rows.__asyncjobs_reconciler__  # type: ignore[attr-defined]
TIMEOUT = 1.0
"""ASYNCJOBS_REDIS_TIMEOUT of the producer under test."""
PASSWORD = "s3cret"


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "sentinel") as started:
        yield started


class Producer:
    """A web app's pattern, until stopped: commit a pending row, then enqueue its job.
    Keeps each call's outcome: ``enqueued``; ``unavailable`` (RedisUnavailableError:
    not enqueued); ``unknown`` (EnqueueOutcomeUnknownError: sent, no answer)."""

    def __init__(self, app: App, pool: asyncpg.Pool) -> None:
        self.app, self.pool = app, pool
        self.outcomes: list[tuple[int, str]] = []
        self.stopped = asyncio.Event()

    def count(self, outcome: str, since: int = 0) -> int:
        return sum(1 for _, said in self.outcomes[since:] if said == outcome)

    async def run(self) -> None:
        while not self.stopped.is_set():
            row = await self.pool.fetchval("INSERT INTO databases DEFAULT VALUES RETURNING id")
            # The bound is the behaviour: a call waits for Redis at most TIMEOUT before it
            # returns or raises (twice that allowed for a busy machine's scheduling).
            async with bounded(2 * TIMEOUT, f"the enqueue of row {row} ending"):
                try:
                    await self.app.enqueue(create_database, row)
                    outcome = "enqueued"
                except EnqueueOutcomeUnknownError:
                    outcome = "unknown"
                except RedisUnavailableError:
                    outcome = "unavailable"
            self.outcomes.append((row, outcome))
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def producing(app: App, pool: asyncpg.Pool) -> AsyncIterator[Producer]:
    producer = Producer(app, pool)
    task = asyncio.create_task(producer.run())
    try:
        yield producer
        producer.stopped.set()
        await task  # an AssertionError from `bounded` fails the test here
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_master_killed_under_a_producer_and_a_worker_both_carry_on_and_no_row_is_lost(
    sentinels: SentinelSet, database_url: str
) -> None:
    url = sentinels.url()
    settings = Settings(redis_url=url, database_url=database_url, redis_timeout=TIMEOUT)
    env = {
        "ASYNCJOBS_REDIS_URL": url,
        "ASYNCJOBS_DATABASE_URL": database_url,
        "ASYNCJOBS_IMPORTS": "tests.recjobs",
        "ASYNCJOBS_POLL_DELAY": "0.02",
        "PYTHONPATH": str(ROOT),
        "REC_DELAY": "0.005",
        "REC_EVERY": "86400",  # the test runs the reconciler itself, after the failover
    }
    async with App(settings) as app:
        await app.migrate()
        pool = await app.db()
        await pool.execute(SCHEMA)
        with WorkerProcess(env, cwd=ROOT) as worker:
            async with producing(app, pool) as producer:
                await eventually(lambda: producer.count("enqueued") >= 50, what="50 enqueues")
                await eventually(lambda: _ready_at_least(pool, 20), what="the worker draining")
                old_master = sentinels.master_address()
                sentinels.kill_master()
                # While no master answers, calls fail within their bound (Producer.run).
                await eventually(lambda: producer.count("unavailable") >= 1, what="a failure")
                await eventually(
                    lambda: sentinels.master_address() not in (None, old_master),
                    what="the Sentinels naming a new master",
                )
                promoted = len(producer.outcomes)
                # Enqueues succeed again on the new master (whose script cache is empty:
                # NOSCRIPT, and the script is loaded there).
                await eventually(
                    lambda: producer.count("enqueued", since=promoted) >= 20,
                    what="enqueues succeeding on the new master",
                )
            await wait_for_event(worker, "redis.unavailable")
            await wait_for_event(worker, "redis.reconnected")
            # The worker drains what reached the new master. The rows whose enqueue
            # raised, and those whose job was on the old master only, stay pending.
            enqueued = {row for row, said in producer.outcomes[promoted:] if said == "enqueued"}
            await eventually(lambda: _all_ready(pool, enqueued), what="the new enqueues done")
            await eventually(lambda: _queue_empty(sentinels), what="the queue drained")
            pending = await pool.fetch("SELECT id FROM databases WHERE state = 'pending'")
            not_enqueued = {row for row, said in producer.outcomes if said == "unavailable"}
            assert not_enqueued <= {r["id"] for r in pending}
            run = await REC.run(app)
            assert run.enqueued == len(pending)
            await eventually(lambda: _all_ready(pool), what="every row ready")
            # The dashboard reads the new master too.
            async with _dashboard(app) as web:
                page = await web.get("/")
            assert page.status_code == 200
            assert 'role="alert"' not in page.text
            assert worker.alive()
            assert log_events(worker.lines, "worker.stopped") == []
            # It stops cleanly too: arq's own client (arq's Sentinel mode) follows the
            # new master for its last writes.
            assert worker.stop() == 0, worker.output[-3000:]
        assert log_events(worker.lines, "worker.stopped")
        effects = await pool.fetchval("SELECT count(DISTINCT database_id) FROM effects")
        rows = await pool.fetchval("SELECT count(*) FROM databases")
    assert effects == rows == len(producer.outcomes)


def _dashboard(app: App) -> httpx.AsyncClient:
    from asyncjobs.web import dashboard

    transport = httpx.ASGITransport(app=dashboard(app))
    return httpx.AsyncClient(transport=transport, base_url="http://dash.test")


async def _ready_at_least(pool: asyncpg.Pool, count: int) -> bool:
    done = await pool.fetchval("SELECT count(*) FROM databases WHERE state = 'ready'")
    return int(done) >= count


async def _all_ready(pool: asyncpg.Pool, rows: set[int] | None = None) -> bool:
    states = await pool.fetch("SELECT id, state FROM databases")
    return all(r["state"] == "ready" for r in states if rows is None or r["id"] in rows)


async def _queue_empty(sentinels: SentinelSet) -> bool:
    address = sentinels.master_address()
    assert address is not None
    client = aioredis.Redis(host=address[0], port=address[1])
    try:
        return int(await client.zcard("arq:queue")) == 0
    finally:
        await client.aclose()


# -- URLs that cannot work -------------------------------------------------------


def _refused_by_cli_and_worker(env: dict[str, str]) -> tuple[str, str]:
    """The one line ``asyncjobs status`` exits 1 with, and the error of the one line the
    worker logs (``worker.misconfigured``) as it exits 1. Both run at once."""
    worker = WorkerProcess({**env, "ASYNCJOBS_IMPORTS": "tests.workerjobs"}, cwd=ROOT)
    worker.start(wait_ready=0)
    try:
        status = cli("status", env=env)
        assert worker.process is not None
        assert worker.process.wait(60) == 1
    finally:
        worker.stop()
    assert status.returncode == 1, status
    (line,) = status.stderr.strip().splitlines()
    assert len(worker.lines) == 1, worker.output
    (event,) = log_events(worker.lines, "worker.misconfigured")
    return line, str(event["error"])


def test_no_reachable_sentinel_is_one_line_naming_the_setting_from_the_cli_and_the_worker() -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{SERVICE}/0"
    for said in _refused_by_cli_and_worker({"ASYNCJOBS_REDIS_URL": url}):
        assert "no redis sentinel answered at 127.0.0.1:" in said.lower(), said
        assert "check the Sentinels' hosts and ports in ASYNCJOBS_REDIS_URL" in said, said


async def test_a_plain_redis_in_a_sentinel_url_is_one_line_naming_the_setting(
    redis_url: str,
) -> None:
    host_port = redis_url.split("://", 1)[1].rsplit("/", 1)[0]  # a Redis server, no Sentinel
    url = f"redis+sentinel://{host_port}/{SERVICE}/0"
    for said in _refused_by_cli_and_worker({"ASYNCJOBS_REDIS_URL": url}):
        assert "answered but is not a Redis Sentinel" in said, said
        assert "for one Redis server use redis://" in said, said
    async with App(Settings(redis_url=url)) as app:
        with pytest.raises(RedisUnavailableError, match="is not a Redis Sentinel"):
            await app.enqueue(create_database, 1)


async def test_an_unknown_service_is_one_line_naming_the_setting_and_the_fix(
    tmp_path: Path,
) -> None:
    with SentinelSet(tmp_path / "sentinel", password=PASSWORD) as sentinels:
        await _unknown_service_then_the_right_one(sentinels)


async def _unknown_service_then_the_right_one(sentinels: SentinelSet) -> None:
    url = sentinels.url(service="no-such-service")
    for said in _refused_by_cli_and_worker({"ASYNCJOBS_REDIS_URL": url}):
        assert "monitor no service named 'no-such-service'" in said, said
        assert "fix the service name in ASYNCJOBS_REDIS_URL" in said, said
        assert PASSWORD not in said

    # The dashboard says the same in its banner.
    async with App(Settings(redis_url=url)) as app, _dashboard(app) as web:
        page = await web.get("/")
    assert page.status_code == 200
    assert "monitor no service named &#39;no-such-service&#39;" in page.text
    assert PASSWORD not in page.text

    # The right name, from the same Sentinels, reaches the master's database 3 with the
    # URL's password.
    async with App(Settings(redis_url=sentinels.url(db=3))) as app:
        await (await app.redis()).set("written", "through the Sentinels")
    client = aioredis.Redis(port=sentinels.master_port, db=3, password=sentinels.password)
    try:
        assert await client.get("written") == b"through the Sentinels"
    finally:
        await client.aclose()
