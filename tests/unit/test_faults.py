"""Bad input gets one clear error naming what to fix, before anything is written
(no server here; tests/integration/test_faults.py has what a worker does with it)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncjobs import App, AsyncJobsError, InvalidOptionError, JobSerializationError
from asyncjobs._enqueue import split_options
from asyncjobs._jobs import build_spec
from asyncjobs._retries import parse_duration
from asyncjobs._runnables import decode_payload
from asyncjobs._settings import redact
from asyncjobs.testing import free_port
from tests.conftest import run_module
from tests.helpers import Nowhere
from tests.workerjobs import record_args


async def _job(ctx: dict[str, Any], a: Any = None) -> None: ...


SPEC = build_spec(_job, name="fault_job")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"_defer_by": math.nan}, "_defer_by"),
        ({"_defer_by": math.inf}, "_defer_by"),
        ({"_defer_by": 10**400}, "_defer_by"),
        ({"_defer_by": -1}, "_defer_by"),
        ({"_expires": math.nan}, "_expires"),
        ({"_expires": math.inf}, "_expires"),
        ({"_jitter": math.nan}, "_jitter"),
        ({"_jitter": timedelta(days=36500)}, "_jitter"),
        ({"_defer_until": datetime(9999, 1, 1, tzinfo=UTC)}, "_defer_until"),
        ({"_job_id": "x" * 1_000_000}, "_job_id"),
        ({"_job_try": 10**30}, "_job_try"),
        ({"_job_try": 0}, "_job_try"),
        ({"_job_try": True}, "_job_try"),
        ({"_queue_name": "arq:job:x"}, "_queue_name"),
        ({"_queue_name": "with space"}, "_queue_name"),
    ],
)
def test_bad_option_values_are_one_error_naming_the_option(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidOptionError, match=named):
        split_options(SPEC, (), dict(options))


async def test_an_argument_nested_too_deeply_is_a_serialization_error_naming_it(
    offline_app: App, nowhere: Nowhere
) -> None:
    deep: list[Any] = []
    current = deep
    for _ in range(100_000):
        current.append([])
        current = current[0]
    with pytest.raises(JobSerializationError, match="argument 1 .*nested too deeply"):
        await offline_app.enqueue(record_args, deep)
    assert nowhere.dialled == 0  # nothing written: Redis was not even dialled


def test_a_huge_duration_is_one_clear_error() -> None:
    with pytest.raises(AsyncJobsError, match="too long a duration"):
        parse_duration("99999999999999d")
    assert parse_duration("2w") == timedelta(weeks=2)


def test_every_password_form_is_masked() -> None:
    assert redact("redis://127.0.0.1:6399/0?password=s3cret") == (
        "redis://127.0.0.1:6399/0?password=***"
    )
    assert redact("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("postgresql://u:s3cret@h/db?sslmode=require&password=s3cret") == (
        "postgresql://u:***@h/db?sslmode=require&password=***"
    )
    assert redact("redis://h:6379/0?db=2") == "redis://h:6379/0?db=2"


def test_a_worker_never_prints_a_password_given_in_the_query_string() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?password=s3cret-value"
    result = run_module(
        "arq",
        "asyncjobs.WorkerSettings",
        env={"ASYNCJOBS_REDIS_URL": url, "ASYNCJOBS_IMPORTS": "tests.workerjobs"},
    )
    assert result.returncode != 0
    assert "nothing is listening" in result.stderr
    assert "s3cret-value" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b'{"f": "x", "a": {"not": "a list"}, "k": {}, "et": 1}', "not a list"),
        (b'{"f": "x", "a": [], "k": [1], "et": 1}', "not an object"),
        (b'{"a": [], "k": {}, "et": 1}', "names no job"),
        (b'{"f": "x", "a": [], "k": {}, "t": "two", "et": 1}', "not a whole number"),
        (b'{"f": "x", "a": [], "k": {}, "et": "soon"}', "not milliseconds"),
        (b"[" * 100_000 + b"]" * 100_000, "not a JSON job payload"),
        (b"\x80\x04pickle", "not a JSON job payload"),
    ],
)
def test_ill_shaped_payloads_are_described_not_run(payload: bytes, says: str) -> None:
    described = decode_payload(payload)
    assert isinstance(described, str)
    assert says in described
