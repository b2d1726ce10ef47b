"""Retry policies and options, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import Backoff, JobDefinitionError


@given(
    base=st.floats(0.01, 100),
    factor=st.floats(1, 10),
    cap_mult=st.floats(1, 1000),
    jitter=st.floats(0, 1),
    n=st.integers(1, 60),
)
def test_backoff_stays_in_bounds_under_the_cap_and_grows_in_expectation(
    base: float, factor: float, cap_mult: float, jitter: float, n: int
) -> None:
    policy = Backoff(base=base, factor=factor, cap=base * cap_mult, jitter=jitter)
    low, high = policy.bounds(n)
    assert 0 <= low <= high <= policy.cap
    assert low >= high * (1 - jitter) - 1e-9
    for _ in range(20):
        assert low - 1e-9 <= policy.delay(n) <= high + 1e-9
    next_low, next_high = policy.bounds(n + 1)
    assert (next_low + next_high) / 2 >= (low + high) / 2 - 1e-9  # non-decreasing mean


def test_the_default_policy_is_documented_and_capped() -> None:
    policy = Backoff()
    assert policy.bounds(1) == (7.5, 15.0)
    assert policy.bounds(2) == (15.0, 30.0)
    assert policy.bounds(25) == (3 * 3600.0, 6 * 3600.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tries": 0}, "max_tries"),
        ({"backoff": object()}, "delay"),
        ({"retry_on": "ValueError"}, "exception classes"),
        ({"give_up_on": (KeyError, 3)}, "exception classes"),
    ],
)
def test_bad_retry_options_are_refused(options: dict[str, object], message: str) -> None:
    async def f(ctx: dict[str, object]) -> None: ...

    with pytest.raises(JobDefinitionError, match=message):
        asyncjobs.job(registry=asyncjobs.Registry(), **options)(f)  # type: ignore[call-overload]
