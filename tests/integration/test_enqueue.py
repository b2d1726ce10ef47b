from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.worker import Worker, func
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import (
    App,
    EnqueueRequest,
    InvalidOptionError,
    JobArgumentsError,
    JobSerializationError,
    RedisUnavailableError,
    Settings,
    UnknownJobError,
    UnknownOptionError,
)
from asyncjobs._enqueue import serialize_job
from asyncjobs.serializer import deserialize
from asyncjobs.testing import free_port
from tests.workerjobs import InvoiceJob, record_args


async def test_enqueue_writes_arqs_job_format(app: App, redis: aioredis.Redis) -> None:
    job = await app.enqueue(record_args, 1, [2, 3], note="hi")
    assert job is not None
    payload = json.loads(await redis.get(f"arq:job:{job.job_id}"))
    assert payload["f"] == "record_args"
    assert payload["a"] == [1, [2, 3]]
    assert payload["k"] == {"note": "hi"}
    assert payload["t"] is None
    assert abs(payload["et"] - time.time() * 1000) < 60_000
    assert await redis.zscore("arq:queue", job.job_id) is not None
    ttl_ms = await redis.pttl(f"arq:job:{job.job_id}")
    assert 86_000_000 < ttl_ms <= 86_400_000  # arq's rule: a day past the run time


async def test_class_jobs_enqueue_by_class_or_name(app: App, redis: aioredis.Redis) -> None:
    by_class = await app.enqueue(InvoiceJob, 7)
    by_name = await app.enqueue("invoice_job", 8)
    assert by_class is not None
    assert by_name is not None
    assert await redis.zcard("arq:queue") == 2


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
    app: App, redis: aioredis.Redis, call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await call(app)
    assert await redis.dbsize() == 0


async def test_errors_share_the_enqueue_error_base(app: App) -> None:
    with pytest.raises(asyncjobs.EnqueueError):
        await app.enqueue(record_args, 1, _defer=5)


async def test_duplicate_job_id_returns_none_and_keeps_the_first(
    app: App, redis: aioredis.Redis
) -> None:
    first = await app.enqueue(record_args, 1, _job_id="invoice-42")
    second = await app.enqueue(record_args, 2, _job_id="invoice-42")
    assert first is not None
    assert first.job_id == "invoice-42"
    assert second is None
    assert json.loads(await redis.get("arq:job:invoice-42"))["a"] == [1, None][:1]


async def test_deferred_and_expiring_jobs_get_arqs_score_and_ttl(
    app: App, redis: aioredis.Redis
) -> None:
    before = time.time() * 1000
    job = await app.enqueue(record_args, 1, _defer_by=timedelta(seconds=90), _expires=120)
    assert job is not None
    score = await redis.zscore("arq:queue", job.job_id)
    assert before + 89_000 <= score <= time.time() * 1000 + 90_000
    assert 110_000 < await redis.pttl(f"arq:job:{job.job_id}") <= 120_000
    at = datetime.now(UTC) + timedelta(hours=1)
    later = await app.enqueue(record_args, 2, _defer_until=at, _queue_name="other")
    assert later is not None
    assert await redis.zscore("other", later.job_id) == pytest.approx(at.timestamp() * 1000, abs=2)


async def test_client_middleware_runs_outermost_first_and_can_reject(
    settings: Settings, redis: aioredis.Redis
) -> None:
    seen: list[str] = []

    async def outer(request: EnqueueRequest, call_next: Any) -> Any:
        seen.append("outer:" + request.job_name)
        return await call_next(request)

    async def gate(request: EnqueueRequest, call_next: Any) -> Any:
        seen.append("gate")
        if request.args[0] == "stop":
            return None
        request.options["_job_id"] = f"id-{request.args[0]}"
        return await call_next(request)

    async with App(settings, client_middleware=[outer, gate]) as app:
        assert await app.enqueue(record_args, "stop") is None
        assert await redis.dbsize() == 0
        job = await app.enqueue(record_args, "go")
    assert job is not None
    assert job.job_id == "id-go"
    assert seen == ["outer:record_args", "gate", "outer:record_args", "gate"]


async def test_jobs_enqueued_by_asyncjobs_run_on_arqs_own_worker(
    app: App, redis_url: str, redis: aioredis.Redis
) -> None:
    """Compatibility: arq's unmodified Worker runs what asyncjobs wrote."""
    ran: list[tuple[Any, ...]] = []

    async def plain(ctx: dict[str, Any], a: Any, b: Any = None, *, note: str = "") -> str:
        ran.append((a, b, note, ctx["job_try"]))
        return "ok"

    await app.enqueue(record_args, 1, note="x")
    await app.enqueue(record_args, 2, 3, _job_try=2)
    worker = Worker(
        functions=[func(plain, name="record_args")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        job_deserializer=deserialize,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    assert sorted(ran) == [(1, None, "x", 1), (2, 3, "", 2)]
    assert await redis.zcard("arq:queue") == 0


async def test_unreachable_redis_fails_fast_with_a_clear_error() -> None:
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    async with App(dead) as app:
        start = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="Redis is unreachable.*not enqueued"):
            await app.enqueue(record_args, 1)
        assert time.monotonic() - start < 5  # bounded: it did not hang


async def test_module_level_enqueue_uses_the_default_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis: aioredis.Redis
) -> None:
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", redis_url)
    job = await asyncjobs.enqueue("record_args", 5)
    assert job is not None
    assert asyncjobs.get_app().settings.redis_url == redis_url
    await asyncjobs.get_app().close()
    assert await redis.exists(f"arq:job:{job.job_id}") == 1


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


async def test_client_middleware_added_after_the_first_enqueue_takes_effect(
    app: App, redis: aioredis.Redis
) -> None:
    assert await app.enqueue(record_args, "before") is not None  # the chain is built now

    async def refuse(request: Any, call_next: Any) -> None:
        return None

    app.client_middleware.append(refuse)
    assert await app.enqueue(record_args, "after") is None  # the chain was built anew
    assert await app.enqueue_many(record_args, ["bulk"]) == [None]
    app.client_middleware.remove(refuse)
    assert await app.enqueue(record_args, "again") is not None
    assert await redis.zcard("arq:queue") == 2
