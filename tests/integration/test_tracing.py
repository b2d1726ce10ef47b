"""Tracing: one trace from the enqueue to the job's run, read with the SDK's in-memory exporter.

The producer runs in the test process. The consumer runs in an in-process
``Worker(app, burst=True)`` (the same exporter), and once in a real worker process
(``ASYNCJOBS_TRACING=true``, this module imported for its jobs) that writes its spans
to a file as JSON lines. arq's own worker runs a traced job, and the package runs
without OpenTelemetry installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.worker import Worker as ArqWorker
from arq.worker import func
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from structlog.testing import capture_logs

import asyncjobs
from asyncjobs import App, ConfigurationError, ExecutionRequest, Settings
from asyncjobs._arq import Retry
from asyncjobs._core import JobContext
from asyncjobs._settings import environment_help
from asyncjobs._tracing import Tracing
from asyncjobs.runner import Worker
from asyncjobs.serializer import deserialize
from asyncjobs.testing import WorkerProcess
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
TRY = "asyncjobs.job.try"
SPANS_FILE = "TRACING_TEST_SPANS_FILE"
"""Set for a worker process that imports this module: where it writes its spans."""


class _JsonLines(SpanExporter):
    """Each finished span as one JSON line (``ReadableSpan.to_json``) appended to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            out.writelines(span.to_json(indent=None) + "\n" for span in spans)
        return SpanExportResult.SUCCESS


if os.environ.get(SPANS_FILE):  # a worker process of the cross-process test
    _worker_provider = TracerProvider()
    _worker_provider.add_span_processor(SimpleSpanProcessor(_JsonLines(os.environ[SPANS_FILE])))
    trace.set_tracer_provider(_worker_provider)

_EXPORTER = InMemorySpanExporter()
_seen: list[tuple[int, int]] = []
"""(argument, span id current inside the job) of each run of ``traced_echo`` in this process."""


@asyncjobs.job
async def traced_echo(ctx: JobContext, n: int) -> int:
    _seen.append((n, trace.get_current_span().get_span_context().span_id))
    return n


@asyncjobs.job(max_tries=2, backoff=asyncjobs.Backoff(base=0.01))
async def traced_flaky(ctx: JobContext, n: int) -> None:
    if ctx["job_try"] == 1:
        raise ValueError(f"first try of {n}")


@asyncjobs.job(max_tries=1)
async def traced_broken(ctx: JobContext) -> None:
    raise RuntimeError("broken for good")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter of this process's tracer provider (set once), emptied."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _seen.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
async def traced(settings: Settings, spans: InMemorySpanExporter) -> AsyncIterator[App]:
    """An App with tracing on, its schema applied."""
    async with App(settings, tracing=True) as app:
        await app.migrate()
        yield app


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


async def run_worker(app: App, *queues: str) -> Worker:
    """An in-process worker of ``app`` until its queues are empty (at most 30 s)."""
    worker = Worker(app, burst=True, handle_signals=False, poll_delay=0.01, queues=queues or None)
    await asyncio.wait_for(worker.run(), 30)
    return worker


def traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent naming ``span``, less its flags (the SDK's choice)."""
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}"


def carried_parent(data: dict[str, Any]) -> str:
    """The traceparent a payload carries, less its flags."""
    found: str = data["trace"]["traceparent"]
    return found.rsplit("-", 1)[0]


async def payload(redis: aioredis.Redis, job_id: str) -> dict[str, Any]:
    raw = await redis.get(f"arq:job:{job_id}")
    assert raw is not None
    data: dict[str, Any] = json.loads(raw)
    return data


def span_id(span: ReadableSpan | SpanContext | None) -> int | None:
    """A span's id, or its parent's (``span.parent`` is a SpanContext)."""
    context = span.get_span_context() if isinstance(span, ReadableSpan) else span
    return None if context is None else context.span_id


async def run_script(script: str, redis_url: str, database_url: str) -> dict[str, Any]:
    """Run ``script`` (given the two URLs as arguments) in a Python process of its own;
    the JSON object on its last line of output."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, redis_url, database_url],
        env={**os.environ, "PYTHONPATH": str(ROOT), "ASYNCJOBS_LOG_LEVEL": "error"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# -- on, off, and the one error ----------------------------------------------------


def test_tracing_is_read_from_the_environment_like_every_setting() -> None:
    assert Settings.from_env({}).tracing is False
    assert Settings.from_env({"ASYNCJOBS_TRACING": "true"}).tracing is True
    assert Settings.from_env({"ASYNCJOBS_TRACING": "off"}).tracing is False
    with pytest.raises(ConfigurationError, match="ASYNCJOBS_TRACING must be true or false"):
        Settings.from_env({"ASYNCJOBS_TRACING": "sometimes"})
    assert "ASYNCJOBS_TRACING" in dict(environment_help())  # in `asyncjobs --help`
    assert App(Settings(tracing=True)).tracing is not None
    assert App(Settings(tracing=True), tracing=False).tracing is None  # the argument wins
    assert App(Settings()).tracing is None


async def test_without_tracing_the_payload_is_arqs_and_nothing_is_traced(
    app: App, redis: aioredis.Redis, spans: InMemorySpanExporter
) -> None:
    await app.migrate()
    job = await app.enqueue(traced_echo, 1)
    assert job is not None
    assert set(await payload(redis, job.job_id)) == {"t", "f", "a", "k", "et"}
    await run_worker(app)
    assert [n for n, _ in _seen] == [1]
    assert spans.get_finished_spans() == ()


async def test_the_package_runs_without_opentelemetry_and_tracing_names_the_extra(
    redis_url: str, database_url: str
) -> None:
    script = """
import asyncio, json, sys
sys.modules["opentelemetry"] = None  # as if asyncjobs[otel] were not installed
import asyncjobs
from asyncjobs.runner import Worker

@asyncjobs.job
async def plain(ctx, n):
    return n

async def main():
    settings = asyncjobs.Settings(redis_url=sys.argv[1], database_url=sys.argv[2])
    out = {}
    async with asyncjobs.App(settings) as app:
        await app.migrate()
        out["enqueued"] = await app.enqueue(plain, 1) is not None
        worker = Worker(app, burst=True, handle_signals=False)
        await asyncio.wait_for(worker.run(), 30)
        out["ran"] = worker.jobs_complete
    for made in (
        lambda: asyncjobs.App(settings, tracing=True),
        lambda: asyncjobs.App(asyncjobs.Settings.from_env({"ASYNCJOBS_TRACING": "true"})),
    ):
        try:
            made()
        except asyncjobs.ConfigurationError as exc:
            out.setdefault("errors", []).append(str(exc))
    out["imported"] = sorted(m for m, v in sys.modules.items() if "opentelemetry" in m and v)
    print(json.dumps(out))

asyncio.run(main())
"""
    out = await run_script(script, redis_url, database_url)
    assert out["enqueued"] is True
    assert out["ran"] == 1
    assert out["imported"] == []
    assert len(out["errors"]) == 2
    for error in out["errors"]:
        assert "pip install 'asyncjobs[otel]'" in error
        assert "ASYNCJOBS_TRACING" in error


async def test_without_an_sdk_the_current_context_is_carried_to_the_job_and_nothing_made(
    redis_url: str, database_url: str
) -> None:
    # A process with only the API (no tracer provider can be unset once set: a process
    # of its own). An instrumentation has made a remote context current (an incoming
    # request's); the enqueue carries it as it is, the job runs with it current, and a
    # job enqueued outside any context carries none.
    script = """
import asyncio, json, sys
from opentelemetry import context, trace
import asyncjobs
from asyncjobs.runner import Worker

seen = []

@asyncjobs.job
async def passed(ctx, n):
    span = trace.get_current_span()
    seen.append([n, format(span.get_span_context().span_id, "016x"), span.is_recording()])

async def main():
    settings = asyncjobs.Settings(redis_url=sys.argv[1], database_url=sys.argv[2])
    incoming = trace.NonRecordingSpan(trace.SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
        trace_flags=trace.TraceFlags(1)))
    out = {"provider": type(trace.get_tracer_provider()).__name__}
    async with asyncjobs.App(settings, tracing=True) as app:
        await app.migrate()
        redis = await app.redis()
        token = context.attach(trace.set_span_in_context(incoming))
        try:
            inside = await app.enqueue(passed, 1)
        finally:
            context.detach(token)
        outside = await app.enqueue(passed, 2)
        for job in (inside, outside):
            out.setdefault("payloads", []).append(
                json.loads(await redis.get("arq:job:" + job.job_id)).get("trace"))
        worker = Worker(app, burst=True, handle_signals=False)
        await asyncio.wait_for(worker.run(), 30)
    out["seen"] = sorted(seen)
    print(json.dumps(out))

asyncio.run(main())
"""
    out = await run_script(script, redis_url, database_url)
    assert out["provider"] == "ProxyTracerProvider"  # the API's default: no SDK
    assert out["payloads"] == [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        None,
    ]
    assert out["seen"] == [[1, "b7ad6b7169203331", False], [2, "0000000000000000", False]]


# -- one trace across the queue ----------------------------------------------------


async def test_the_run_is_a_consumer_span_whose_parent_is_the_enqueues_producer_span(
    traced: App, redis: aioredis.Redis, spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("tests").start_as_current_span("web request") as handler:
        job = await traced.enqueue(traced_echo, 1, _queue_name="traced")
    assert job is not None
    (send,) = named(spans, "send traced_echo")
    carried = await payload(redis, job.job_id)
    assert set(carried) == {"t", "f", "a", "k", "et", "trace"}
    assert carried_parent(carried) == traceparent(send)

    await run_worker(traced, "traced")
    (process,) = named(spans, "process traced_echo")
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert span_id(send.parent) == handler.get_span_context().span_id  # type: ignore[arg-type]
    assert span_id(process.parent) == span_id(send)
    assert process.context is not None
    assert process.context.trace_id == handler.get_span_context().trace_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "asyncjobs",
        "messaging.destination.name": "traced",
        "messaging.message.id": job.job_id,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "asyncjobs",
        "messaging.destination.name": "traced",
        "messaging.message.id": job.job_id,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "asyncjobs.job.try": 1,
    }
    assert process.status.status_code is StatusCode.UNSET
    assert _seen == [(1, span_id(process))]  # the job ran inside its span


async def test_each_job_of_a_bulk_enqueue_carries_its_own_context(
    traced: App, redis: aioredis.Redis, spans: InMemorySpanExporter
) -> None:
    jobs = await traced.enqueue_many(traced_echo, [(1,), (2,), asyncjobs.Args(3, _job_id="j3")])
    assert all(job is not None for job in jobs)
    sends = {
        str((span.attributes or {})["messaging.message.id"]): span
        for span in named(spans, "send traced_echo")
    }
    assert sorted(sends) == sorted(job.job_id for job in jobs if job is not None)
    assert "j3" in sends
    for job_id, send in sends.items():
        assert carried_parent(await payload(redis, job_id)) == traceparent(send)

    await run_worker(traced)
    processes = named(spans, "process traced_echo")
    assert len(processes) == 3
    for process in processes:
        send = sends[str((process.attributes or {})["messaging.message.id"])]
        assert span_id(process.parent) == span_id(send)


async def test_a_failed_try_records_its_error_and_the_retry_has_the_same_parent(
    traced: App, spans: InMemorySpanExporter
) -> None:
    await traced.enqueue(traced_flaky, 1)
    await traced.enqueue(traced_broken)
    await run_worker(traced)

    (send,) = named(spans, "send traced_flaky")
    first, second = sorted(
        named(spans, "process traced_flaky"),
        key=lambda s: str((s.attributes or {})[TRY]),
    )
    assert span_id(first.parent) == span_id(second.parent) == span_id(send)
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ValueError: first try of 1"
    assert (first.attributes or {})["error.type"] == "ValueError"
    (recorded,) = [event for event in first.events if event.name == "exception"]
    assert (recorded.attributes or {})["exception.type"] == "ValueError"
    assert second.status.status_code is StatusCode.UNSET
    assert not second.events

    (dead,) = named(spans, "process traced_broken")
    assert dead.status.status_code is StatusCode.ERROR
    assert dead.status.description == "RuntimeError: broken for good"
    assert [e.name for e in dead.events] == ["exception"]
    assert len(await traced.dead.list()) == 1  # and it went to the dead letters as usual


@pytest.mark.parametrize(
    "bad",
    [
        "00-not-a-context",
        ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        {"traceparent": "00-xyz"},
        {"traceparent": 12},
        {"tracestate": "vendor=1"},
    ],
    ids=["a-string", "a-list", "a-bad-traceparent", "a-number", "no-traceparent"],
)
async def test_a_malformed_trace_context_runs_the_job_in_a_fresh_trace_with_a_warning(
    traced: App, redis: aioredis.Redis, spans: InMemorySpanExporter, bad: Any
) -> None:
    now_ms = 1_700_000_000_000
    for job_id, n, extra in (("bad", 1, {"trace": bad}), ("plain", 2, {})):
        data = {"t": None, "f": "traced_echo", "a": [n], "k": {}, "et": now_ms, **extra}
        await redis.psetex(f"arq:job:{job_id}", 60_000, json.dumps(data))
        await redis.zadd("arq:queue", {job_id: now_ms})
    with capture_logs() as logs:
        await run_worker(traced)

    assert sorted(n for n, _ in _seen) == [1, 2]  # both ran
    warnings = [e for e in logs if e["event"] == "trace.context_invalid"]
    assert [(w["job_id"], w["log_level"]) for w in warnings] == [("bad", "warning")]
    assert "fresh trace" in warnings[0]["error"]
    processes = named(spans, "process traced_echo")
    assert len(processes) == 2
    assert [p.parent for p in processes] == [None, None]
    trace_ids = {p.context.trace_id for p in processes if p.context is not None}
    assert len(trace_ids) == 2
    assert all(p.status.status_code is StatusCode.UNSET for p in processes)


async def test_arqs_own_worker_runs_a_traced_job_ignoring_the_trace_key(
    traced: App, redis_url: str, redis: aioredis.Redis
) -> None:
    job = await traced.enqueue(traced_echo, 7)
    assert job is not None
    assert "traceparent" in (await payload(redis, job.job_id))["trace"]
    ran: list[int] = []

    async def bare(ctx: dict[str, Any], n: int) -> None:
        ran.append(n)

    worker = ArqWorker(
        functions=[func(bare, name="traced_echo")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        job_deserializer=deserialize,
        keep_result=0,
    )
    try:
        await asyncio.wait_for(worker.main(), 30)
    finally:
        await worker.close()
    assert ran == [7]
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await redis.zcard("arq:queue") == 0


@pytest.mark.slow
async def test_a_worker_process_continues_the_trace_begun_in_this_one(
    traced: App, worker_env: dict[str, str], tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    exported = tmp_path / "spans.jsonl"
    env = {
        **worker_env,
        "ASYNCJOBS_IMPORTS": "tests.integration.test_tracing",
        "ASYNCJOBS_TRACING": "true",
        SPANS_FILE: str(exported),
    }
    worker = await asyncio.to_thread(WorkerProcess(env, cwd=ROOT).start)
    try:
        job = await traced.enqueue(traced_echo, 5)
        assert job is not None
        process = await eventually(
            _exported(exported, "process traced_echo"), what="the worker's span in the file"
        )
    finally:
        await asyncio.to_thread(worker.stop)
    (send,) = named(spans, "send traced_echo")
    assert process["kind"] == "SpanKind.CONSUMER"
    assert send.context is not None
    assert process["parent_id"] == f"0x{send.context.span_id:016x}"
    assert process["context"]["trace_id"] == f"0x{send.context.trace_id:032x}"
    assert process["attributes"]["messaging.message.id"] == job.job_id
    assert process["attributes"]["messaging.destination.name"] == "arq:queue"
    assert process["status"]["status_code"] == "UNSET"


def _exported(path: Path, name: str) -> Callable[[], dict[str, Any] | None]:
    """A check for :func:`eventually`: the span called ``name`` in the file, parsed."""

    def find() -> dict[str, Any] | None:
        if not path.exists():
            return None
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        spans = [json.loads(line) for line in complete.splitlines()]
        return next((span for span in spans if span["name"] == name), None)

    return find


# -- the execution layer alone -------------------------------------------------------


async def _through_layer(
    spans: InMemorySpanExporter,
    call_next: Callable[[ExecutionRequest], Awaitable[Any]],
    raises: type[BaseException],
) -> ReadableSpan:
    app = App(Settings())
    spec = app.registry.resolve(traced_echo)
    layer = Tracing().execution_layer(spec, app)
    ctx: JobContext = {"job_id": "j1", "job_try": 3, "queue_name": "q"}
    with pytest.raises(raises):
        await layer(ExecutionRequest(app, spec, ctx, (1,), {}), call_next)
    (span,) = named(spans, "process traced_echo")
    return span


async def test_a_retry_the_job_asked_for_is_no_error_but_one_raised_from_a_failure_is(
    spans: InMemorySpanExporter,
) -> None:
    async def asks(request: ExecutionRequest) -> None:
        raise Retry(defer=1)

    async def failed(request: ExecutionRequest) -> None:
        try:
            raise KeyError("gone")
        except KeyError as exc:
            raise Retry(defer=1) from exc

    asked = await _through_layer(spans, asks, Retry)
    assert asked.status.status_code is StatusCode.UNSET
    assert (asked.attributes or {})["asyncjobs.job.try"] == 3
    spans.clear()
    retried = await _through_layer(spans, failed, Retry)
    assert retried.status.status_code is StatusCode.ERROR
    assert (retried.attributes or {})["error.type"] == "KeyError"


async def test_a_cancelled_run_is_marked_not_failed(spans: InMemorySpanExporter) -> None:
    async def cancelled(request: ExecutionRequest) -> None:
        raise asyncio.CancelledError

    span = await _through_layer(spans, cancelled, asyncio.CancelledError)
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["cancelled"]
