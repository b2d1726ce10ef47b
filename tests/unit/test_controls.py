"""Incident controls without a server: rates, queue names, job names read from payloads,
and bad input refused before anything is sent anywhere (asyncjobs._controls)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import asyncjobs
from asyncjobs import App, ControlError, Settings
from asyncjobs._cli import cli
from asyncjobs._controls import (
    Rate,
    check_queue_name,
    name_markers,
    parse_rate,
    throttled_class,
)
from asyncjobs._enqueue import serialize_job
from tests.helpers import Nowhere
from tests.throttlejobs import throttled_stamp

assert throttled_stamp  # registered in the default registry the Apps below use


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/s", Rate(10, 1)), ("600/m", Rate(600, 60)), (" 5000 / h ", Rate(5000, 3600))],
)
def test_a_rate_is_a_count_per_second_minute_or_hour(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10/x", "unknown period 'x'"),
        ("0/s", "the count must be at least 1"),
        ("-1/s", "the count must be at least 1"),
        ("abc", "is not a rate"),
        ("10", "is not a rate"),
        ("2000000/s", "at most 1,000,000"),
    ],
)
def test_a_malformed_rate_names_the_part_to_fix(text: str, says: str) -> None:
    with pytest.raises(ControlError, match=says):
        parse_rate(text)


def test_a_queue_name_has_no_spaces_and_is_not_empty() -> None:
    assert check_queue_name("arq:queue") == "arq:queue"
    for bad in ("", "bill ing", "x" * 201):
        with pytest.raises(ControlError, match="is not a queue name"):
            check_queue_name(bad)
    for arqs_own in ("arq:job:x", "arq:in-progress:x", "arq:abort"):  # enqueue refuses them
        with pytest.raises(ControlError, match="collide with arq's own keys"):
            check_queue_name(arqs_own)


def test_a_throttled_class_is_told_from_the_payloads_first_bytes_or_by_decoding() -> None:
    markers = name_markers(["invoice_job", "mail"])
    for job_try in (None, 12):
        for name in ("invoice_job", "mail"):
            assert throttled_class(serialize_job(name, (1,), {}, job_try, 5), markers) == name
        other = serialize_job("mail_digest", ("mail",), {"f": "mail"}, job_try, 5)
        assert throttled_class(other, markers) is None
        inside = serialize_job("x", ({"a": 1, "f": "mail", "b": 2},), {}, job_try, 5)
        assert throttled_class(inside, markers) is None  # an argument is not the name
    assert throttled_class(b'{"f":"mail","t":null}', markers) == "mail"  # decoded
    assert throttled_class(b'{"t": null, "f": "mail", "a": []}', markers) == "mail"
    assert throttled_class(b"not json", markers) is None


async def test_bad_input_is_refused_before_postgresql_is_asked(nowhere: Nowhere) -> None:
    settings = Settings(redis_url=nowhere.redis_url, database_url=nowhere.database_url)
    async with App(settings) as app:
        for rate in ("10/x", "0/s", "-1/s", "abc"):
            with pytest.raises(ControlError, match=f"rate '{rate}'"):
                await app.flags.throttle("throttled_stamp", rate)
        with pytest.raises(ControlError, match="no job named 'throttled_stmap'.*throttled_stamp"):
            await app.flags.throttle("throttled_stmap", "10/s")
        with pytest.raises(ControlError, match="is not a queue name"):
            await app.flags.pause_queue("bill ing")
    assert nowhere.dialled == 0


def test_the_cli_says_what_is_wrong_in_one_line() -> None:
    env = {
        "ASYNCJOBS_IMPORTS": "tests.throttlejobs",
        "ASYNCJOBS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/nothing",
    }
    runner = CliRunner()
    try:
        bad = runner.invoke(cli, ["jobs", "throttle", "throttled_stamp", "10/x"], env=env)
        both = runner.invoke(cli, ["jobs", "throttle", "throttled_stamp", "10/s", "--off"], env=env)
    finally:  # the command configured logging for itself: back to the suite's
        asyncjobs.configure_logging("json", "info", force=True, cache=False)
    assert bad.exit_code == 2  # a wrong command line, found before connecting
    assert bad.output.strip().splitlines()[-1] == (
        "Error: rate '10/x': unknown period 'x'; use s (second), m (minute) or h (hour)"
    )
    assert both.exit_code == 2
    assert "give a RATE such as 10/s, or --off" in both.output
