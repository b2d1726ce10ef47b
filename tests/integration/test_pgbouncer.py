"""asyncjobs through a real PgBouncer in transaction pooling, in front of the suite's PostgreSQL.

The pooler is the ``pgbouncer`` fixture (Debian's ``pgbouncer``, ``pool_mode =
transaction``): each transaction of one client connection may land on another server
process. Nothing tells the App so: it detects it. Migrations, flags (by the TTL alone,
and notified over a direct ``ASYNCJOBS_DATABASE_LISTEN_URL``), dead letters,
reconcilers and exclusive jobs (locked over the listen URL; refused without one) are
run through it with asyncjobs' own worker loop in process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from asyncjobs import App, ConfigurationError, Settings
from asyncjobs._schema import migrations
from asyncjobs._uniqueness import advisory_key
from asyncjobs.runner import Worker
from asyncjobs.testing import EmbeddedPgBouncer
from tests.conftest import cli
from tests.helpers import eventually
from tests.lockjobs import hold, post_entry
from tests.recjobs import SCHEMA, pending_rows
from tests.retryjobs import fixable

LISTEN_VAR = "ASYNCJOBS_DATABASE_LISTEN_URL"
REC = pending_rows.__asyncjobs_reconciler__  # type: ignore[attr-defined]


@pytest.fixture
def pooled_url(database_url: str, pgbouncer: EmbeddedPgBouncer) -> str:
    """This test's database, through the PgBouncer."""
    return pgbouncer.url(database_url.rsplit("/", 1)[1])


def _settings(redis_url: str, pooled_url: str, **more: Any) -> Settings:
    return Settings(redis_url=redis_url, database_url=pooled_url, log_format="json", **more)


@pytest.fixture
async def pooled(redis_url: str, pooled_url: str) -> AsyncIterator[App]:
    """An App through the pooler only, migrated."""
    async with App(_settings(redis_url, pooled_url)) as app:
        await app.migrate()
        yield app


@pytest.fixture
async def pooled_direct(redis_url: str, pooled_url: str, database_url: str) -> AsyncIterator[App]:
    """An App through the pooler, with a direct listen URL, migrated."""
    async with App(_settings(redis_url, pooled_url, database_listen_url=database_url)) as app:
        await app.migrate()
        yield app


async def _work(app: App) -> None:
    """Run asyncjobs' worker loop in process until the queue is empty."""
    await Worker(app, burst=True, handle_signals=False, poll_delay=0.01, max_jobs=10).run()


async def test_transaction_pooling_is_detected_and_said_once_and_nothing_else_is_taken_for_it(
    redis_url: str, pooled_url: str, database_url: str
) -> None:
    with capture_logs() as logs:
        async with App(_settings(redis_url, pooled_url)) as app:
            await app.db()
            await app.close()  # reopened: settled once, said once
            await app.db()
            assert app.pooling is not None
            assert (app.pooling.transaction, app.pooling.source) == (True, "detected")
        async with App(_settings(redis_url, database_url)) as direct:
            await direct.db()
            assert direct.pooling is not None
            assert not direct.pooling.transaction
        with EmbeddedPgBouncer(database_url, pool_mode="session") as session_mode:
            async with App(_settings(redis_url, session_mode.url())) as behind:
                await behind.db()
                assert behind.pooling is not None
                assert not behind.pooling.transaction
        configured = _settings(redis_url, database_url, database_pool_mode="transaction")
        async with App(configured) as told:
            await told.db()
            assert told.pooling is not None
            assert (told.pooling.transaction, told.pooling.source) == (True, "configured")
    said = [e for e in logs if e["event"] == "database.transaction_pooling"]
    assert [e["source"] for e in said] == ["detected", "configured"]
    assert said[0]["log_level"] == "warning"
    assert "ASYNCJOBS_FLAG_TTL" in said[0]["flags"]
    assert LISTEN_VAR in said[0]["exclusive_jobs"]


async def test_a_statement_reused_after_the_pooler_moved_the_connection_still_runs(
    pooled: App, pooled_url: str
) -> None:
    pool = await pooled.db()
    other = await asyncpg.connect(pooled_url, statement_cache_size=0)
    try:
        async with pool.acquire() as conn:
            before = await conn.fetchval("SELECT pg_backend_pid() + $1::int", 0)
            # Another client takes the server this connection just ran on (PgBouncer hands
            # out the last one released), so the next statement lands on another server,
            # where a cached prepared statement would not exist.
            async with other.transaction():
                held = await other.fetchval("SELECT pg_backend_pid()")
                after = await conn.fetchval("SELECT pg_backend_pid() + $1::int", 0)
    finally:
        await other.close()
    assert held == before != after


async def test_migrations_through_the_pooler_apply_each_file_once_when_run_at_once(
    redis_url: str, pooled_url: str
) -> None:
    apps = [App(_settings(redis_url, pooled_url)) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(app.migrate() for app in apps))
        pool = await apps[0].db()
        versions = await pool.fetch("SELECT version FROM asyncjobs.schema_migrations ORDER BY 1")
    finally:
        await asyncio.gather(*(app.close() for app in apps))
    everything = [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert sorted(name for names in applied for name in names) == everything
    assert [r[0] for r in versions] == [m.version for m in migrations()]


async def test_a_flag_change_reaches_a_pooled_process_by_the_ttl_alone(
    pooled: App, redis_url: str, pooled_url: str
) -> None:
    async with App(_settings(redis_url, pooled_url, flag_ttl=0.2)) as reader:
        assert not await reader.flags.is_enabled("disable_fixable")
        await pooled.flags.enable("disable_fixable", reason="pgbouncer test")
        await eventually(lambda: reader.flags.is_enabled("disable_fixable"), what="the TTL reload")
        # It never tried to LISTEN through the pooler (notifications would go astray).
        assert reader.flags._listener is None
        assert reader.flags._ttl_only


async def test_a_flag_change_reaches_a_pooled_process_at_once_over_the_listen_url(
    pooled: App, redis_url: str, pooled_url: str, database_url: str
) -> None:
    # A TTL far longer than the test: only the notification can bring the change.
    settings = _settings(redis_url, pooled_url, flag_ttl=600, database_listen_url=database_url)
    async with App(settings) as reader:
        assert not await reader.flags.is_enabled("disable_fixable")
        await eventually(lambda: reader.flags._listener is not None, what="LISTEN is up")
        await pooled.flags.enable("disable_fixable", reason="pgbouncer test")
        await eventually(lambda: reader.flags.cached("disable_fixable"), what="the notification")
        assert reader.flags.loads == 1


async def test_dead_letters_through_the_pooler_are_written_listed_and_retried(
    pooled: App, redis: aioredis.Redis
) -> None:
    await pooled.enqueue(fixable, 7)
    await _work(pooled)
    (letter,) = await pooled.dead.list()
    assert (letter.job_name, letter.args, letter.tries) == ("fixable", [7], 1)
    assert "the bank is down" in letter.error
    await redis.set("fixed", 1)
    assert await pooled.dead.retry(letter.id) is not None
    await _work(pooled)
    assert await pooled.dead.list() == []
    assert await redis.llen("runs:fixable") == 2


async def test_a_reconciler_through_the_pooler_streams_its_rows_and_their_jobs_finish_them(
    pooled: App,
) -> None:
    pool = await pooled.db()
    await pool.execute(SCHEMA)
    await pool.execute("INSERT INTO databases (state) SELECT 'pending' FROM generate_series(1, 60)")
    result = await REC.run(pooled)
    assert (result.rows, result.enqueued) == (60, 60)
    await _work(pooled)
    states = await pool.fetch("SELECT state, count(*) FROM databases GROUP BY 1")
    assert {r[0]: r[1] for r in states} == {"ready": 60}
    assert await pool.fetchval("SELECT count(*) FROM effects") == 60


async def _lock_holder(pool: asyncpg.Pool, lock: str) -> int | None:
    key = advisory_key(lock) & (2**64 - 1)  # pg_locks shows a bigint key as two oids
    return await pool.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
        key >> 32,
        key & 0xFFFFFFFF,
    )


async def test_exclusive_jobs_run_under_their_lock_over_the_listen_url(
    pooled_direct: App, redis: aioredis.Redis, database_url: str
) -> None:
    pool = await pooled_direct.db()
    await pool.execute("CREATE TABLE lock_runs (n int, started float8, ended float8, pid int)")
    direct = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await pooled_direct.enqueue(hold, 5, 30.0)
        worker = asyncio.ensure_future(_work(pooled_direct))
        await eventually(lambda: redis.llen("held"), what="the job holds acct:5")
        holder = await _lock_holder(direct, "acct:5")
        assert holder is not None  # held for the whole run, by one session
        await redis.set("release:5", 1)
        await worker
        assert await _lock_holder(direct, "acct:5") is None
    finally:
        await direct.close()

    await pooled_direct.enqueue_many(post_entry, [(1, n) for n in range(20)])
    await _work(pooled_direct)
    runs = await pool.fetch("SELECT started, ended FROM lock_runs ORDER BY started")
    assert len(runs) == 20
    assert all(a["ended"] <= b["started"] for a, b in itertools.pairwise(runs))


async def test_an_exclusive_job_without_a_listen_url_is_refused_naming_it(
    pooled: App,
) -> None:
    pool = await pooled.db()
    await pool.execute("CREATE TABLE lock_runs (n int, started float8, ended float8, pid int)")
    await pooled.enqueue(post_entry, 1, 1)
    with capture_logs() as logs:
        await _work(pooled)
    assert await pool.fetchval("SELECT count(*) FROM lock_runs") == 0  # never ran unlocked
    (letter,) = await pooled.dead.list()
    assert letter.job_name == "post_entry"
    assert letter.tries == 1
    assert LISTEN_VAR in letter.error
    assert "transaction" in letter.error
    (said,) = [e for e in logs if e["event"] == "worker.misconfigured"]
    assert LISTEN_VAR in said["error"]
    assert "post_entry" in said["refused"]


async def test_a_listen_url_through_the_pooler_is_one_clear_error_naming_it(
    redis_url: str, pooled_url: str
) -> None:
    async with App(_settings(redis_url, pooled_url, database_listen_url=pooled_url)) as app:
        with pytest.raises(ConfigurationError) as info:
            await app.lock_pool()
    message = str(info.value)
    assert message.startswith(LISTEN_VAR)
    assert "directly" in message
    assert "\n" not in message

    env = {"ASYNCJOBS_REDIS_URL": redis_url, "ASYNCJOBS_DATABASE_URL": pooled_url}
    check = cli("check", env={**env, LISTEN_VAR: pooled_url})
    assert check.returncode == 1, check.stdout + check.stderr
    lines = dict(line.split(None, 1) for line in check.stdout.splitlines())
    assert lines["postgres"].startswith("ok (transaction pooling, detected")
    assert lines["listen"].startswith(f"FAILED: {LISTEN_VAR}")
