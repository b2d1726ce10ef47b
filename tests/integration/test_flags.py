"""The kill switch: flags in PostgreSQL, the cache, the enqueue and execution gates."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

import asyncjobs
from asyncjobs import App, Settings
from asyncjobs.testing import free_port
from tests.helpers import bounded, eventually
from tests.workerjobs import InvoiceJob, record_args


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as app:
        await app.migrate()
        yield app


async def test_disabled_job_is_rejected_without_touching_redis_and_others_go_through(
    migrated: App, redis: aioredis.Redis
) -> None:
    await migrated.flags.enable("disable_invoice_job", actor="ops", reason="bad deploy")
    with capture_logs() as logs:
        assert await migrated.enqueue(InvoiceJob, 1) is None
    assert await redis.dbsize() == 0
    rejected = [e for e in logs if e["event"] == "job.rejected"]
    assert rejected == [
        {
            "event": "job.rejected",
            "log_level": "info",
            "job": "invoice_job",
            "reason": "flag",
            "flag": "disable_invoice_job",
        }
    ]
    other = await migrated.enqueue(record_args, "same queue, other job")
    assert other is not None
    assert await redis.zcard("arq:queue") == 1

    await migrated.flags.disable("disable_invoice_job", actor="ops", reason="fixed")
    again = await migrated.enqueue(InvoiceJob, 2)
    assert again is not None
    assert await redis.zcard("arq:queue") == 2


async def test_enable_and_disable_are_audited_and_noops_are_not(migrated: App) -> None:
    first = await migrated.flags.enable("disable_invoice_job", actor="alice", reason="incident 7")
    repeat = await migrated.flags.enable("disable_invoice_job", actor="bob")
    undo = await migrated.flags.disable("disable_invoice_job", actor="carol", reason="over")
    assert (first.old, first.new, first.changed) == (None, True, True)
    assert repeat.changed is False
    assert (undo.old, undo.new) == (True, False)
    history = await migrated.flags.history("disable_invoice_job")
    assert [(h.old_value, h.new_value, h.actor, h.reason) for h in history] == [
        (True, False, "carol", "over"),
        (None, True, "alice", "incident 7"),
    ]
    assert await migrated.flags.history("disable_other") == []


async def test_a_warm_cache_answers_without_a_query_and_a_cold_one_loads_once(
    migrated: App,
) -> None:
    await migrated.flags.enable("disable_invoice_job")
    store = migrated.flags
    store._fresh_until = 0.0  # cold
    loads = store.loads
    results = await asyncio.gather(*(store.is_enabled("disable_invoice_job") for _ in range(1000)))
    assert all(results)
    assert store.loads == loads + 1
    for _ in range(10_000):
        assert store.cached("disable_invoice_job") is True
        assert store.cached("disable_record_args") is False
    assert store.loads == loads + 1


async def test_a_thousand_concurrent_enqueues_on_a_cold_cache_make_one_flag_query(
    migrated: App, redis: aioredis.Redis
) -> None:
    store = migrated.flags
    store._fresh_until = 0.0
    loads = store.loads
    jobs = await asyncio.gather(*(migrated.enqueue(record_args, i) for i in range(1000)))
    assert all(jobs)
    assert store.loads == loads + 1
    assert await redis.zcard("arq:queue") == 1000


async def test_another_app_sees_a_change_by_notification_long_before_its_ttl(
    settings: Settings, migrated: App
) -> None:
    async with App(settings.__class__(**{**_fields(settings), "flag_ttl": 600.0})) as other:
        assert await other.flags.is_enabled("disable_invoice_job") is False  # warm, 10 min TTL
        # Its LISTEN is set up after the first load, on a connection of its own.
        await eventually(lambda: other.flags._listener is not None, what="the App listens")
        await migrated.flags.enable("disable_invoice_job")
        await eventually(
            lambda: other.flags.cached("disable_invoice_job") is True,
            within=5,
            interval=0.005,
            what="the notification of the change arrived",
        )
        assert await other.enqueue(InvoiceJob, 1) is None
        await migrated.flags.disable("disable_invoice_job")
        await eventually(
            lambda: other.flags.cached("disable_invoice_job") is False,
            within=5,
            interval=0.005,
            what="the notification of the change back arrived",
        )


async def test_without_notifications_the_ttl_bounds_staleness(
    settings: Settings, migrated: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with App(settings.__class__(**{**_fields(settings), "flag_ttl": 0.3})) as other:

        async def no_listen() -> None:
            return None

        monkeypatch.setattr(other.flags, "_listen", no_listen)
        assert await other.flags.is_enabled("disable_invoice_job") is False
        await migrated.flags.enable("disable_invoice_job")
        assert other.flags.cached("disable_invoice_job") is False  # stale, within its TTL
        # The TTL runs out by itself (no notification here): the cache stops answering...
        await eventually(
            lambda: other.flags.cached("disable_invoice_job") is None,
            within=5,
            what="the cached value expired",
        )
        # ...and the next read loads the change.
        assert await other.flags.is_enabled("disable_invoice_job") is True


async def test_unreachable_store_fails_open_by_default_and_closed_when_configured(
    redis_url: str, redis: aioredis.Redis
) -> None:
    dead = f"postgresql://x@127.0.0.1:{free_port()}/db"
    async with App(Settings(redis_url=redis_url, database_url=dead, flag_timeout=0.3)) as app:
        with capture_logs() as logs:
            async with bounded(5, "enqueues bounded by the flag timeout"):
                assert await app.enqueue(record_args, 1) is not None
                assert await app.enqueue(record_args, 2) is not None
    warnings = [e for e in logs if e["event"] == "flags.unavailable"]
    assert len(warnings) == 1  # logged once, not per call
    assert warnings[0]["serving"] == "all off (fail open)"

    closed = Settings(
        redis_url=redis_url, database_url=dead, flag_timeout=0.3, flags_fail_closed=True
    )
    async with App(closed) as app:
        assert await app.enqueue(record_args, 3) is None
    assert await redis.zcard("arq:queue") == 2


async def test_module_level_flags_use_the_default_app(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, database_url: str
) -> None:
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("ASYNCJOBS_DATABASE_URL", database_url)
    await asyncjobs.get_app().migrate()
    await asyncjobs.flags.enable("disable_record_args", reason="test")
    assert await asyncjobs.flags.is_enabled("disable_record_args") is True
    assert [f.name for f in await asyncjobs.flags.list()] == ["disable_record_args"]
    assert len(await asyncjobs.flags.history()) == 1
    assert await asyncjobs.enqueue(record_args, 1) is None
    await asyncjobs.flags.disable("disable_record_args")
    assert await asyncjobs.flags.is_enabled("disable_record_args") is False
    await asyncjobs.get_app().close()


async def test_rejections_are_counted_per_flag(migrated: App) -> None:
    await migrated.flags.enable("disable_invoice_job")
    for i in range(3):
        assert await migrated.enqueue(InvoiceJob, i) is None
    (flag,) = await migrated.flags.list()
    assert (flag.name, flag.enabled, flag.rejected, flag.skipped) == (
        "disable_invoice_job",
        True,
        3,
        0,
    )


async def test_a_script_that_enqueues_once_and_exits_keeps_its_rejection_count(
    migrated: App, worker_env: dict[str, str]
) -> None:
    """The README's one-liner: asyncio.run(asyncjobs.enqueue(...)) never closes the default
    App, and its event loop ends right after; the count is written before it does."""
    await migrated.flags.enable("disable_invoice_job")
    script = (
        "import asyncio, asyncjobs, tests.workerjobs as jobs\n"
        "print(asyncio.run(asyncjobs.enqueue(jobs.InvoiceJob, 1)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        env={**env, **worker_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "None"), done.stderr
    (flag,) = await migrated.flags.list()
    assert (flag.name, flag.rejected) == ("disable_invoice_job", 1)


def _fields(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}
