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
import pytest
import redis.asyncio as aioredis

from asyncjobs import App, RedisUnavailableError, Settings
from asyncjobs.testing import WorkerProcess, free_port
from tests.conftest import ROOT, cli
from tests.helpers import bounded, eventually, log_events, wait_for_event
from tests.recjobs import SCHEMA, create_database, pending_rows
from tests.sentinels import SERVICE, SentinelSet

pytestmark = pytest.mark.slow

REC = pending_rows.__asyncjobs_reconciler__  # type: ignore[attr-defined]
ROWS = 400
TIMEOUT = 1.0
"""ASYNCJOBS_REDIS_TIMEOUT of the producer under test."""


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "sentinel") as started:
        yield started


class Producer:
    """Enqueues the job of each pending row, one call after another, until stopped; keeps
    each call's outcome: a job, or the RedisUnavailableError it raised."""

    def __init__(self, app: App, rows: list[int]) -> None:
        self.app, self.rows = app, rows
        self.outcomes: list[tuple[int, str]] = []
        self.stopped = asyncio.Event()

    def count(self, outcome: str) -> int:
        return sum(1 for _, said in self.outcomes if said == outcome)

    async def run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            row = self.rows[i % len(self.rows)]
            i += 1
            # The bound is the behaviour: a call waits for Redis at most TIMEOUT before it
            # returns or raises (twice that for a busy machine's scheduling).
            async with bounded(2 * TIMEOUT, f"enqueue #{i} ending during a failover"):
                try:
                    job = await self.app.enqueue(create_database, row)
                except RedisUnavailableError:
                    self.outcomes.append((row, "unavailable"))
                    await asyncio.sleep(0.01)
                    continue
            self.outcomes.append((row, "enqueued" if job is not None else "duplicate"))
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def producing(app: App, rows: list[int]) -> AsyncIterator[Producer]:
    producer = Producer(app, rows)
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
        "REC_EVERY": "1",
    }
    async with App(settings) as app:
        await app.migrate()
        pool = await app.db()
        await pool.execute(SCHEMA)
        await pool.execute(
            "INSERT INTO databases (state) SELECT 'pending' FROM generate_series(1, $1)", ROWS
        )
        with WorkerProcess(env, cwd=ROOT) as worker:
            async with producing(app, list(range(1, ROWS + 1))) as producer:
                await eventually(lambda: producer.count("enqueued") >= 50, what="50 enqueues")
                await eventually(lambda: _ready(pool, 20), what="the worker draining")
                old_master = sentinels.master_address()
                sentinels.kill_master()
                # While no master answers, calls fail fast (bounded in Producer.run).
                await eventually(lambda: producer.count("unavailable") >= 1, what="a failure")
                await eventually(
                    lambda: sentinels.master_address() not in (None, old_master),
                    what="the Sentinels naming a new master",
                )
                promoted_at = len(producer.outcomes)
                # Enqueues succeed again on the new master (its script cache is empty:
                # NOSCRIPT, loaded again).
                await eventually(
                    lambda: _enqueued_since(producer, promoted_at) >= 20,
                    what="enqueues succeeding on the new master",
                )
            await wait_for_event(worker, "redis.unavailable")
            await wait_for_event(worker, "redis.reconnected")
            # Jobs written to the old master but not yet copied to the replica are gone
            # with it: the reconciler enqueues their rows again, and every row ends done.
            await eventually(lambda: _ready(pool, ROWS), within=60, what="every row ready")
            assert worker.alive()
        effects = await pool.fetchval("SELECT count(DISTINCT database_id) FROM effects")
    assert effects == ROWS
    assert producer.count("unavailable") >= 1


def _enqueued_since(producer: Producer, index: int) -> int:
    return sum(1 for _, said in producer.outcomes[index:] if said == "enqueued")


async def _ready(pool: asyncpg.Pool, count: int) -> bool:
    done = await pool.fetchval("SELECT count(*) FROM databases WHERE state = 'ready'")
    return int(done) >= count


# -- URLs that cannot work -------------------------------------------------------


def test_no_reachable_sentinel_is_one_line_naming_the_setting_from_the_cli_and_the_worker(
    tmp_path: Path,
) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{SERVICE}/0"
    env = {"ASYNCJOBS_REDIS_URL": url, "ASYNCJOBS_REDIS_TIMEOUT": "1"}
    status = cli("status", env=env)
    assert status.returncode == 1, status
    (line,) = status.stderr.strip().splitlines()
    assert "ASYNCJOBS_REDIS_URL" in line and "no Redis Sentinel answered" in line, line

    worker = WorkerProcess({**env, "ASYNCJOBS_IMPORTS": "tests.workerjobs"}, cwd=ROOT)
    worker.start(wait_ready=0)
    assert worker.process is not None
    assert worker.process.wait(60) == 1
    worker.stop()
    (event,) = log_events(worker.lines, "worker.misconfigured")
    assert "ASYNCJOBS_REDIS_URL" in event["error"]
    assert "no Redis Sentinel answered" in event["error"]
    assert len(worker.lines) == 1, worker.output


async def test_an_unknown_service_is_one_line_naming_the_setting_and_the_fix(
    sentinels: SentinelSet,
) -> None:
    url = sentinels.url(service="no-such-service")
    env = {"ASYNCJOBS_REDIS_URL": url, "ASYNCJOBS_REDIS_TIMEOUT": "1"}
    status = cli("status", env=env)
    assert status.returncode == 1, status
    (line,) = status.stderr.strip().splitlines()
    assert "monitor no service named 'no-such-service'" in line, line
    assert "ASYNCJOBS_REDIS_URL" in line

    worker = WorkerProcess({**env, "ASYNCJOBS_IMPORTS": "tests.workerjobs"}, cwd=ROOT)
    worker.start(wait_ready=0)
    assert worker.process is not None
    assert worker.process.wait(60) == 1
    worker.stop()
    (event,) = log_events(worker.lines, "worker.misconfigured")
    assert "monitor no service named 'no-such-service'" in event["error"]

    # The right name, from the same Sentinels, reaches the master's database 3.
    async with App(Settings(redis_url=sentinels.url(db=3))) as app:
        await (await app.redis()).set("written", "through the Sentinels")
    client = aioredis.Redis(port=sentinels.master_port, db=3)
    try:
        assert await client.get("written") == b"through the Sentinels"
    finally:
        await client.aclose()
