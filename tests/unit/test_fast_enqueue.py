"""Bulk enqueue and jitter: a call that cannot be right fails before anything is sent
(no server here; tests/integration/test_fast_enqueue.py has what is written)."""

from __future__ import annotations

from typing import Any

import pytest

from asyncjobs import (
    App,
    Args,
    EnqueueError,
    JobArgumentsError,
    JobSerializationError,
    RedisUnavailableError,
    Settings,
)
from asyncjobs.testing import free_port
from tests.helpers import Nowhere
from tests.workerjobs import record_args


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"_jitter_min": 5}, "_jitter_min needs _jitter"),
        ({"_jitter": 5, "_jitter_min": 5}, "must be less than _jitter"),
        ({"_jitter": -1}, "positive"),
    ],
)
async def test_bad_jitter_is_a_clear_error(
    offline_app: App, nowhere: Nowhere, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(EnqueueError, match=message):
        await offline_app.enqueue(record_args, 1, **options)
    assert nowhere.dialled == 0  # nothing written: Redis was not even dialled


@pytest.mark.parametrize(
    ("items", "error", "message"),
    [
        (42, EnqueueError, "takes an iterable"),
        ("abc", EnqueueError, "takes an iterable"),
        ([1, 2, (3, 4, 5, 6)], JobArgumentsError, r"item 2 \(\(3, 4, 5, 6\)\): .*too many"),
        ([1, object(), 3], JobSerializationError, r"item 1 .*cannot be written as JSON"),
        ([1, Args(2, _defer=1)], EnqueueError, r"item 1 .*unknown option '_defer'"),
    ],
)
async def test_bad_bulk_input_is_a_clear_error_and_nothing_of_its_batch_is_written(
    offline_app: App, nowhere: Nowhere, items: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await offline_app.enqueue_many(record_args, items)
    assert nowhere.dialled == 0  # nothing of the batch written: Redis was not even dialled


async def test_enqueue_many_of_nothing_writes_nothing(offline_app: App, nowhere: Nowhere) -> None:
    assert await offline_app.enqueue_many(record_args, []) == []
    with pytest.raises(EnqueueError, match="job arguments go in the items"):
        await offline_app.enqueue_many(record_args, [1], note="x")  # type: ignore[call-arg]  # the wrong call under test
    assert nowhere.dialled == 0  # nothing written: Redis was not even dialled


async def test_bulk_enqueue_with_redis_down_fails_fast_saying_what_is_known() -> None:
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    async with App(dead, kill_switch=False) as app:
        with pytest.raises(RedisUnavailableError, match="0 job.s. of earlier batches"):
            await app.enqueue_many(record_args, range(10))
