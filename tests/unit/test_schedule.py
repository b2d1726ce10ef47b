"""Schedules of scheduled jobs, without servers: Cron's and Every's run times in UTC, what
@job(cron=, every=) refuses, and how `asyncjobs jobs list` shows a schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Cron, JobDefinitionError
from asyncjobs._jobs import build_spec
from asyncjobs._schedule import Every
from tests.conftest import cli


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        (Cron(minute={0, 30}), at(2026, 1, 31, 23, 45), at(2026, 2, 1, 0, 0)),
        (Cron(minute={0, 30}), at(2026, 1, 31, 23, 0), at(2026, 1, 31, 23, 30)),
        (Cron(hour=3), at(2026, 3, 1, 3, 0), at(2026, 3, 2, 3, 0)),  # strictly after
        (Cron(hour=3), at(2026, 12, 31, 4, 0), at(2027, 1, 1, 3, 0)),
        (Cron(weekday="mon", hour=9), at(2026, 11, 30, 9, 0, 1), at(2026, 12, 7, 9, 0)),
        (Cron(month=2, day=29), at(2026, 1, 1), at(2028, 2, 29)),
        (Cron(day=31), at(2026, 4, 1), at(2026, 5, 31)),
        (Cron(day=13, weekday=4), at(2026, 1, 1), at(2026, 2, 13)),  # both must match
        (Cron(second=set(range(0, 60, 15))), at(2026, 1, 1, 0, 0, 59), at(2026, 1, 1, 0, 1)),
        (Cron(hour=12, second=30), at(2026, 1, 1, 12, 5, 31), at(2026, 1, 1, 12, 6, 30)),
    ],
)
def test_cron_gives_the_first_matching_second_after_a_moment(
    cron: Cron, after: datetime, expected: datetime
) -> None:
    assert cron.next_after(after) == expected


def test_cron_reads_times_in_utc_whatever_the_zone_given() -> None:
    berlin = timezone(timedelta(hours=1))
    assert Cron(hour=3).next_after(datetime(2026, 1, 1, 3, 30, tzinfo=berlin)) == at(
        2026, 1, 1, 3, 0
    )


def test_fields_left_out_are_every_value_when_coarser_and_the_first_when_finer() -> None:
    assert repr(Cron(hour=3)) == "Cron(hour=3, minute=0, second=0)"
    assert repr(Cron(minute={30, 0})) == "Cron(minute={0, 30}, second=0)"
    assert repr(Cron(weekday="Sunday")) == "Cron(weekday=6, hour=0, minute=0, second=0)"
    assert Cron(weekday={"Mon", "friday"}) == Cron(weekday={0, 4})
    assert Cron(minute=5).describe() == "cron minute=5 second=0 UTC"
    assert Cron(hour=set(range(9, 18)), minute={0, 30}).describe() == (
        "cron hour=9-17 minute=0,30 second=0 UTC"
    )
    assert Cron(hour=3) == Cron(hour=3, minute=0, second=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "needs at least one field"),
        ({"minute": 60}, "from 0 to 59"),
        ({"weekday": 7}, "(0 is Monday)"),
        ({"weekday": "someday"}, "day names"),
        ({"weekday": "monkey"}, "day names"),  # no day begins it
        ({"weekday": "mon,fri"}, "as a set"),
        ({"weekday": "fri-sun"}, "as a set"),
        ({"hour": 1.5}, "whole number"),
        ({"hour": True}, "whole number"),
        ({"month": 2, "day": 30}, "never comes"),
        ({"day": set()}, "each value must be"),
    ],
)
def test_a_cron_that_cannot_be_is_refused_in_one_line(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(JobDefinitionError, match=None) as caught:
        Cron(**fields)
    assert message in str(caught.value)


def test_every_runs_on_multiples_of_its_period_since_the_epoch() -> None:
    assert Every.of(timedelta(seconds=7)).next_after(at(2026, 1, 1)) == at(2026, 1, 1, 0, 0, 7)
    five = Every.of(timedelta(minutes=5))
    assert five.next_after(at(2026, 1, 1, 10, 2, 59)) == at(2026, 1, 1, 10, 5)
    assert five.next_after(at(2026, 1, 1, 10, 5)) == at(2026, 1, 1, 10, 10)
    assert Every.of(1).next_after(datetime(2026, 1, 1, 0, 0, 0, 500_000, UTC)) == at(
        2026, 1, 1, 0, 0, 1
    )
    assert five.describe() == "every 0:05:00"
    for bad in (0, 0.5, 1.5, timedelta(milliseconds=1500), -60, True):
        with pytest.raises(JobDefinitionError, match="whole number of seconds from 1 up"):
            Every.of(bad)  # type: ignore[arg-type]


async def tick(ctx: Any) -> None: ...


async def takes_one(ctx: Any, n: int) -> None: ...


async def defaulted(ctx: Any, n: int = 1) -> None: ...


def test_a_scheduled_job_takes_no_arguments_and_retries_once_unless_told() -> None:
    assert build_spec(tick).max_tries == 25
    assert build_spec(tick, every=60).max_tries == 1  # the next period is its retry
    assert build_spec(tick, every=60, max_tries=3).max_tries == 3
    assert build_spec(defaulted, cron=Cron(minute=0)).schedule == Cron(minute=0)
    with pytest.raises(JobDefinitionError, match="must run without arguments"):
        build_spec(takes_one, every=timedelta(minutes=1))
    with pytest.raises(JobDefinitionError, match="not both"):
        build_spec(tick, every=60, cron=Cron(minute=0))
    with pytest.raises(JobDefinitionError, match="must be an asyncjobs.Cron"):
        build_spec(tick, cron={"minute": 0})  # type: ignore[arg-type]
    with pytest.raises(JobDefinitionError, match="unknown option"):
        asyncjobs.job(schedule=60)  # type: ignore[call-overload]


def test_jobs_list_shows_each_schedule_and_next_run() -> None:
    env = {"ASYNCJOBS_IMPORTS": "tests.cronjobs"}
    listed = cli("jobs", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    below = lines[lines.index(next(x for x in lines if x.startswith("even_seconds "))) + 1]
    assert below.split(", next run ")[0].strip() == "cron second=0-58/2 UTC"
    document = json.loads(cli("jobs", "list", "--json", env=env).stdout)
    jobs = {j["name"]: j for j in document["jobs"]}
    assert jobs["every_second"]["schedule"] == "every 0:00:01"
    assert jobs["even_seconds"]["queue"] == "cron"
    next_run = datetime.fromisoformat(jobs["flaky_every_two"]["next_run"])
    assert next_run.tzinfo is not None
    assert next_run.timestamp() % 2 == 0
    assert next_run.timestamp() - datetime.now(UTC).timestamp() <= 2  # after the command's now
