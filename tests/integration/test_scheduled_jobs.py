"""Scheduled jobs (``@job(every=...)``, ``@job(cron=Cron(...))``): once per period across
workers, retried per their options, stopped by their kill switch."""

from __future__ import annotations

import itertools
from collections import Counter

import asyncpg
import pytest

from asyncjobs import App, Settings
from asyncjobs.testing import WorkerProcess
from tests.conftest import ROOT
from tests.cronjobs import SCHEMA
from tests.helpers import eventually, log_events


async def _periods(pool: asyncpg.Pool, job: str, job_try: int = 1) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(DISTINCT job_id) FROM cron_runs WHERE job = $1 AND job_try = $2",
            job,
            job_try,
        )
    )


async def _runs(pool: asyncpg.Pool, job: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM cron_runs WHERE job = $1", job))


def _skipped(workers: list[WorkerProcess], job: str) -> int:
    return sum(len(log_events(w.lines, "job.skipped", job=job)) for w in workers)


@pytest.mark.slow
async def test_three_workers_run_each_period_once_retry_per_options_and_the_flag_stops_it(
    settings: Settings, worker_env: dict[str, str]
) -> None:
    async with App(settings) as app:
        await app.migrate()
        pool = await app.db()
        await pool.execute(SCHEMA)
        env = {**worker_env, "ASYNCJOBS_IMPORTS": "tests.cronjobs"}
        workers = [WorkerProcess(env, cwd=ROOT) for _ in range(3)]
        try:
            for w in workers:
                w.start()

            async def enough() -> bool:
                return (
                    await _periods(pool, "every_second") >= 6
                    and await _periods(pool, "even_seconds") >= 3
                    and await _periods(pool, "flaky_every_two", job_try=2) >= 2
                )

            await eventually(enough, within=40, what="six, three and two periods run")
            await app.flags.enable("disable_every_second")
            # The workers learn of the flag by a notification, or within the flag TTL:
            # three periods skipped, then the runs so far are counted...
            await eventually(lambda: _skipped(workers, "every_second") >= 3, what="3 skipped")
            stopped_at = await _runs(pool, "every_second")
            even_at = await _runs(pool, "even_seconds")
            # ...and three more periods pass, the other scheduled jobs running on.
            await eventually(lambda: _skipped(workers, "every_second") >= 6, what="6 skipped")
            await eventually(lambda: _periods_after(pool, even_at), what="even_seconds runs on")
            after = await _runs(pool, "every_second")
            rows = await pool.fetch("SELECT job, job_id, job_try FROM cron_runs")
        finally:
            for w in workers:
                w.stop()
    per_run = Counter((r["job"], r["job_id"], r["job_try"]) for r in rows)
    assert set(per_run.values()) == {1}  # no period ran twice, on any of the three workers
    for job, step in (("every_second", 1000), ("even_seconds", 2000), ("flaky_every_two", 2000)):
        periods = sorted({int(r["job_id"].rsplit(":", 1)[1]) for r in rows if r["job"] == job})
        assert all(b - a == step for a, b in itertools.pairwise(periods)), (job, periods)
    # max_tries=2: the failed first try of a period is retried once, under the period's id.
    tries = Counter(r["job_try"] for r in rows if r["job"] == "flaky_every_two")
    assert set(tries) == {1, 2}
    assert tries[2] >= 2
    assert after == stopped_at  # the flag stopped every_second, and only it
    assert stopped_at >= 6


async def _periods_after(pool: asyncpg.Pool, count: int) -> bool:
    return await _runs(pool, "even_seconds") > count
