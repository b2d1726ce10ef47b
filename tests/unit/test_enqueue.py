"""Enqueue's checks, and the payloads it writes, without a server: a call that cannot be
right fails before anything is sent (see tests/integration/test_enqueue.py for the rest)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import (
    App,
    InvalidOptionError,
    JobArgumentsError,
    JobSerializationError,
    RedisUnavailableError,
    Settings,
    UnknownJobError,
    UnknownOptionError,
)
from asyncjobs._enqueue import serialize_job
from asyncjobs.testing import free_port
from tests.helpers import Nowhere, bounded
from tests.workerjobs import record_args


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda app: app.enqueue("no_such_job", 1), UnknownJobError, "no job named 'no_such_job'"),
        (lambda app: app.enqueue("record_arg", 1), UnknownJobError, "Did you mean 'record_args'"),
        (
            lambda app: app.enqueue(record_args, 1, _defer=5),
            UnknownOptionError,
            "unknown option '_defer'. Did you mean '_defer_by' or '_defer_until'",
        ),
        (
            lambda app: app.enqueue(record_args, 1, datetime.now()),
            JobSerializationError,
            r"argument 2 \(datetime\) cannot be written as JSON",
        ),
        (
            lambda app: app.enqueue(record_args, 1, note={1, 2}),
            JobSerializationError,
            r"keyword argument 'note' \(set\)",
        ),
        (
            lambda app: app.enqueue(record_args, float("nan")),
            JobSerializationError,
            r"argument 1 \(float\)",
        ),
        (lambda app: app.enqueue(record_args), JobArgumentsError, "missing a required argument"),
        (lambda app: app.enqueue(record_args, 1, 2, 3), JobArgumentsError, "too many"),
        (lambda app: app.enqueue(record_args, 1, colour=2), JobArgumentsError, "unexpected"),
        (lambda app: app.enqueue(record_args, 1, _defer_by=-1), InvalidOptionError, "0 or more"),
        (
            lambda app: app.enqueue(record_args, 1, _defer_by=1, _defer_until=datetime.now(UTC)),
            InvalidOptionError,
            "not both",
        ),
        (lambda app: app.enqueue(record_args, 1, _job_id=""), InvalidOptionError, "non-empty"),
        (lambda app: app.enqueue(record_args, 1, _expires="1h"), InvalidOptionError, "seconds"),
        (lambda app: app.enqueue(len, 1), UnknownJobError, "is not a job"),
    ],
)
async def test_bad_calls_raise_a_clear_error_and_write_nothing(
    offline_app: App, nowhere: Nowhere, call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await call(offline_app)
    assert nowhere.dialled == 0  # nothing was sent to Redis: nothing can have been written


async def test_errors_share_the_enqueue_error_base(offline_app: App) -> None:
    with pytest.raises(asyncjobs.EnqueueError):
        await offline_app.enqueue(record_args, 1, _defer=5)  # type: ignore[call-arg]  # the typo under test


async def test_unreachable_redis_fails_fast_with_a_clear_error() -> None:
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    async with App(dead) as app:
        with pytest.raises(RedisUnavailableError, match="Redis is unreachable.*not enqueued"):
            async with bounded(5, "the enqueue failing fast"):
                await app.enqueue(record_args, 1)


async def test_no_redis_url_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCJOBS_REDIS_URL", raising=False)
    with pytest.raises(asyncjobs.ConfigurationError, match="ASYNCJOBS_REDIS_URL is not set"):
        await asyncjobs.enqueue("record_args", 5)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    args=st.lists(_json_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(st.text(), _json_values, max_size=3),
    job_try=st.none() | st.integers(1, 50),
)
def test_payloads_are_the_bytes_jsonencoder_writes(
    args: tuple[Any, ...], kwargs: dict[str, Any], job_try: int | None
) -> None:
    payload = serialize_job("récord", args, kwargs, job_try, 1_763_000_000_000)
    expected = {"t": job_try, "f": "récord", "a": args, "k": kwargs, "et": 1_763_000_000_000}
    assert payload == json.dumps(expected, separators=(",", ":"), allow_nan=False).encode()


def test_a_circular_or_bad_argument_does_not_spoil_later_payloads() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    shared = [1, 2]
    for bad, message in ((loop, "Circular reference"), (float("inf"), "Out of range")):
        with pytest.raises(JobSerializationError, match=message):
            serialize_job("record_args", (bad,), {}, None, 1)
        # The same list twice is not circular: the encoder's markers were reset.
        assert serialize_job("record_args", (shared, shared), {}, None, 1) == (
            b'{"t":null,"f":"record_args","a":[[1,2],[1,2]],"k":{},"et":1}'
        )
