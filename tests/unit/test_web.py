"""The dashboard's pieces that need no server: CSRF tokens, the chart, the lazy extra."""

from __future__ import annotations

import subprocess
import sys

from asyncjobs._cli import _url_host
from asyncjobs._throughput import Minute, count
from asyncjobs._web.reads import reason
from asyncjobs._web.routes import chart
from asyncjobs._web.security import Tokens


def test_a_token_is_valid_only_for_the_dashboard_that_signed_it() -> None:
    tokens, other = Tokens(), Tokens()
    token = tokens.new()
    assert tokens.valid(token)
    assert tokens.matches(token, token)
    assert not other.valid(token)
    assert not tokens.matches(token, tokens.new())  # the field must be the cookie's token
    assert not tokens.matches(token, None)
    nonce, _ = token.split(".")
    for forged in ("", "a.b", f"{nonce}.{'0' * 32}", f"{token}.x", nonce):
        assert not tokens.valid(forged), forged


def test_the_chart_scales_to_the_busiest_minute_and_stacks_failures() -> None:
    drawn = chart([Minute(0, 0, 0), Minute(60, 10, 0), Minute(120, 3, 2)], width=300, height=100)
    assert drawn.peak == 10
    assert (drawn.succeeded, drawn.failed) == (13, 2)
    heights = [(round(y), round(h), colour) for _, y, h, colour, _ in drawn.bars]
    assert heights == [(0, 100, "#2e7d32"), (70, 30, "#2e7d32"), (50, 20, "#c62828")]
    assert chart([Minute(0, 0, 0)]).bars == []


def test_counts_go_to_the_minute_they_happened_in() -> None:
    calls: list[tuple[str, ...]] = []

    class Pipe:
        def hincrby(self, key: str, field: str, n: int) -> None:
            calls.append(("hincrby", key, field, str(n)))

        def expire(self, key: str, seconds: int) -> None:
            calls.append(("expire", key, str(seconds)))

    count(Pipe(), 3, 0, now=120.5)
    count(Pipe(), 0, 0, now=120.5)  # nothing finished: no command
    assert calls == [
        ("hincrby", "asyncjobs:throughput:2", "succeeded", "3"),
        ("expire", "asyncjobs:throughput:2", "7200"),
    ]


def test_importing_asyncjobs_does_not_import_the_dashboard() -> None:
    code = "import sys, asyncjobs; print(sorted({'starlette', 'jinja2'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_an_ipv6_host_is_bracketed_in_the_dashboards_url() -> None:
    assert _url_host("::1") == "[::1]"
    assert _url_host("127.0.0.1") == "127.0.0.1"
    assert _url_host("localhost") == "localhost"


def test_a_banner_reason_does_not_repeat_that_the_server_is_unreachable() -> None:
    said = "Redis is unreachable (ConnectionError: Error 111 (x).). Check that Redis is running."
    assert reason("Redis", said) == "ConnectionError: Error 111 (x). Check that Redis is running"
    said = "PostgreSQL at postgresql://h/db is unreachable (OSError: refused). Check it."
    assert reason("PostgreSQL", said) == "OSError: refused (at postgresql://h/db). Check it"
    assert reason("PostgreSQL", "check that PostgreSQL is running.") == (
        "check that PostgreSQL is running"
    )
