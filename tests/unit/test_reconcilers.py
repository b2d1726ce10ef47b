"""Reconcilers without a server: schedules and stable job ids."""

from __future__ import annotations

from datetime import timedelta

import pytest

import asyncjobs
from asyncjobs import JobDefinitionError, stable_job_id
from asyncjobs._reconcilers import schedule_from_every
from tests.recjobs import create_database


def test_every_maps_to_clock_aligned_cron_fields() -> None:
    assert schedule_from_every(timedelta(seconds=15)) == {"second": {0, 15, 30, 45}}
    assert schedule_from_every(timedelta(minutes=1)) == {"minute": set(range(60)), "second": 0}
    assert schedule_from_every(timedelta(hours=6)) == {
        "hour": {0, 6, 12, 18},
        "minute": 0,
        "second": 0,
    }
    with pytest.raises(JobDefinitionError, match="does not divide"):
        schedule_from_every(timedelta(seconds=7 * 60))
    with pytest.raises(JobDefinitionError, match="exactly one of every= or cron="):
        asyncjobs.reconciler(job=create_database)


def test_stable_job_ids_depend_only_on_job_and_arguments() -> None:
    a = stable_job_id("create_database", (1,), {})
    assert a == stable_job_id("create_database", (1,), {})
    assert a != stable_job_id("create_database", (2,), {})
    assert a != stable_job_id("delete_database", (1,), {})
    assert a.startswith("create_database:")
