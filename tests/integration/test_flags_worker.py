"""The kill switch seen from a real worker, an operator's shell and CLI, and a PostgreSQL outage."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from asyncjobs import App, Settings
from asyncjobs._services import EmbeddedPostgres
from asyncjobs.testing import EmbeddedServices, WorkerProcess
from tests.conftest import ROOT
from tests.conftest import cli as run_cli
from tests.helpers import bounded, eventually, log_events, recorded_runs, wait_for_event
from tests.workerjobs import InvoiceJob, record_args

pytestmark = pytest.mark.slow


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator named ops-oncall runs it."""
    return run_cli(*args, env={"USER": "ops-oncall", **env}, stdin=stdin)


async def test_jobs_queued_before_the_flag_are_skipped_by_a_worker_and_others_run(
    settings: Settings, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    async with App(settings) as app:
        await app.migrate()
        queued_before = [await app.enqueue(InvoiceJob, i, _defer_by=1.5) for i in range(3)]
        assert all(queued_before)
        await app.flags.enable("disable_invoice_job", reason="stop it")
        with WorkerProcess(worker_env, cwd=ROOT) as worker:
            await app.enqueue(record_args, "still runs")
            await wait_for_event(worker, "job.skipped", count=3, within=30)
            done = await recorded_runs(redis, 1)
        assert [r["job"] for r in done] == ["record_args"]
        skipped = log_events(worker.lines, "job.skipped")
        assert {s["job_id"] for s in skipped} == {j.job_id for j in queued_before if j}
        assert all(s["flag"] == "disable_invoice_job" for s in skipped)
        (flag,) = await app.flags.list()
        assert (flag.rejected, flag.skipped) == (0, 3)  # the worker flushed its counts


async def test_operator_cli_stops_and_restarts_a_job(
    settings: Settings, redis_url: str, database_url: str
) -> None:
    env = {
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_DATABASE_URL": database_url,
        "ASYNCJOBS_IMPORTS": "tests.workerjobs",
    }
    assert cli("migrate", env=env).returncode == 0
    stop = cli("jobs", "disable", "invoice_job", "--reason", "card processor down", env=env)
    assert stop.returncode == 0, stop.stderr
    assert "disable_invoice_job is now ON (did not exist)" in stop.stdout
    assert "new enqueues return None" in stop.stdout

    listing = cli("jobs", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    line = next(x for x in listing.stdout.splitlines() if x.startswith("invoice_job"))
    assert "STOPPED" in line
    other = next(x for x in listing.stdout.splitlines() if x.startswith("record_args"))
    assert "running" in other

    async with App(settings) as app:
        assert await app.enqueue(InvoiceJob, 1) is None
        assert await app.enqueue(InvoiceJob, 2) is None

    flags = cli("flags", "list", env=env)
    row = next(x for x in flags.stdout.splitlines() if x.startswith("disable_invoice_job"))
    assert row.split()[1:4] == ["ON", "2", "0"]  # state, rejected, skipped
    assert "ops-oncall" in row
    assert "card processor down" in row

    orphan = cli("flags", "enable", "disable_renamed_job", env=env)
    assert orphan.returncode == 0
    flags = cli("flags", "list", env=env)
    assert "matches no registered job" in next(
        x for x in flags.stdout.splitlines() if x.startswith("disable_renamed_job")
    )

    start = cli("jobs", "enable", "invoice_job", "--reason", "recovered", env=env)
    assert start.returncode == 0
    assert "disable_invoice_job is now off (was on)" in start.stdout
    history = cli("flags", "history", "disable_invoice_job", env=env)
    lines = history.stdout.splitlines()
    assert "on -> off" in lines[0]
    assert "recovered" in lines[0]
    assert "(new) -> on" in lines[1]
    assert "card processor down" in lines[1]

    typo = cli("jobs", "disable", "invoic_job", env=env)
    assert typo.returncode == 1
    assert "Did you mean 'invoice_job'" in typo.stderr
    bad = cli("flags", "enable", "Robert'); DROP TABLE flags;--", env=env)
    assert bad.returncode == 1
    assert "not a valid flag name" in bad.stderr


async def test_shell_accepts_top_level_await(redis_url: str, database_url: str) -> None:
    env = {
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_DATABASE_URL": database_url,
        "ASYNCJOBS_IMPORTS": "tests.workerjobs",
    }
    assert cli("migrate", env=env).returncode == 0
    script = "\n".join(
        [
            'change = await flags.enable("disable_invoice_job", reason="from the shell")',
            'print("changed", change.changed)',
            'print("rejected", await enqueue(InvoiceJob, 1) is None)',
            "rows = await flags.list()",
            'print("flags", [(f.name, f.enabled, f.rejected) for f in rows])',
            "",
        ]
    )
    result = cli("shell", env=env, stdin=script)
    assert result.returncode == 0, result.stderr
    assert "changed True" in result.stdout
    assert "rejected True" in result.stdout
    assert "flags [('disable_invoice_job', True, 1)]" in result.stdout


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, so it can be stopped mid-run."""
    with EmbeddedServices(redis=False) as services:
        assert services.postgres is not None
        yield services.postgres


async def test_postgres_stopping_mid_run_breaks_neither_enqueue_nor_the_worker(
    own_postgres: EmbeddedPostgres,
    worker_env: dict[str, str],
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    settings = Settings(
        redis_url=redis_url, database_url=own_postgres.url, flag_timeout=0.3, flag_ttl=0.5
    )
    env = {**worker_env, "ASYNCJOBS_DATABASE_URL": own_postgres.url, "ASYNCJOBS_FLAG_TTL": "0.5"}
    async with App(settings) as app:
        await app.migrate()
        await app.flags.enable("disable_invoice_job")
        with WorkerProcess(env, cwd=ROOT) as worker:
            assert await app.enqueue(record_args, "before") is not None
            await recorded_runs(redis, 1)
            own_postgres.stop()
            # Past the TTL (or told by its lost LISTEN): the next reads try the dead store.
            await eventually(
                lambda: app.flags.cached("disable_invoice_job") is None,
                within=10,
                what="the flag cache went stale",
            )
            async with bounded(10, "enqueues bounded, not hung per call"):
                for i in range(20):
                    assert await app.enqueue(record_args, f"during-{i}") is not None
                    assert await app.enqueue(InvoiceJob, i) is None  # last known value: off
            done = await recorded_runs(redis, 21)
            await wait_for_event(worker, "flags.unavailable", within=20)
            assert worker.alive()
        expected = ["before", *(f"during-{i}" for i in range(20))]
        assert sorted(r["args"][0] for r in done) == sorted(expected)
        assert len(log_events(worker.lines, "flags.unavailable")) == 1
