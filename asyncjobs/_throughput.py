"""Succeeded and failed jobs per minute, for the dashboard's chart.

Each worker adds what it finished since its last heartbeat to a Redis hash
per minute, ``asyncjobs:throughput:<minute>`` (fields ``succeeded`` and
``failed``; the minute is Unix seconds // 60), in the heartbeat's own round
trip: the job path does no extra work, and a minute's numbers are at most one
heartbeat (default 2 s) late. The hashes expire after two hours, so
:func:`per_minute` reads 60 small hashes in one pipeline whatever the
workers did. A job that fails and is retried counts as failed once per try.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

THROUGHPUT_PREFIX = "asyncjobs:throughput:"
"""``asyncjobs:throughput:<minute>``: a hash of ``succeeded`` and ``failed`` counts."""
KEEP_S = 2 * 3600


def minute_key(minute: int) -> str:
    """The key of the hash of ``minute`` (Unix seconds // 60)."""
    return f"{THROUGHPUT_PREFIX}{minute}"


def count(pipe: Any, succeeded: int, failed: int, now: float | None = None) -> None:
    """Queue on ``pipe`` the commands adding these counts to the current minute."""
    if not succeeded and not failed:
        return
    key = minute_key(int((time.time() if now is None else now) // 60))
    if succeeded:
        pipe.hincrby(key, "succeeded", succeeded)
    if failed:
        pipe.hincrby(key, "failed", failed)
    pipe.expire(key, KEEP_S)


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute's counts; ``start`` is Unix seconds."""

    start: int
    succeeded: int
    failed: int


async def per_minute(redis: Any, minutes: int = 60, now: float | None = None) -> list[Minute]:
    """The last ``minutes`` minutes (the current one last), zero where nothing finished."""
    last = int((time.time() if now is None else now) // 60)
    span = range(last - minutes + 1, last + 1)
    pipe = redis.pipeline(transaction=False)
    for minute in span:
        pipe.hmget(minute_key(minute), "succeeded", "failed")
    replies = await pipe.execute()
    return [
        Minute(minute * 60, int(ok or 0), int(bad or 0))
        for minute, (ok, bad) in zip(span, replies, strict=True)
    ]
