"""Metrics and health: a real worker process with ASYNCJOBS_METRICS_PORT, and a producer.

The jobs below register when this module is imported: by the test process, and by
the worker subprocesses through ``ASYNCJOBS_IMPORTS=tests.integration.test_metrics``.
The reconciler and the job naming the parked queue register only in a worker whose
environment has ``METRICS_TEST_WORKER`` set, so the default registry every other
test shares gains no scheduled job and no queue.

Every wait has a deadline on real state (the worker's own ``/metrics``, parsed with
prometheus_client's parser); nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
from arq.worker import Retry
from prometheus_client.parser import text_string_to_metric_families

import asyncjobs
from asyncjobs import App
from asyncjobs.testing import WorkerProcess, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.test_metrics"
WORKER_ENV = "METRICS_TEST_WORKER"
QUEUE = "arq:queue"
T = TypeVar("T")
PARKED = "metrics:parked"
"""Named by a job of the worker's registry, so its gauges are read, but not read by it."""


# -- the jobs -----------------------------------------------------------------


@asyncjobs.job
async def metrics_ok(ctx: dict[str, Any], n: int) -> None:
    """Succeeds."""


@asyncjobs.job(max_tries=1)
async def metrics_boom(ctx: dict[str, Any], n: int) -> None:
    raise ValueError(f"boom {n}")


@asyncjobs.job(max_tries=2, backoff=asyncjobs.Backoff(base=0.05, cap=0.05))
async def metrics_flaky(ctx: dict[str, Any], n: int) -> None:
    if ctx["job_try"] == 1:
        raise KeyError(n)


@asyncjobs.job
async def metrics_again(ctx: dict[str, Any]) -> None:
    """Asks for a second try itself: retried, not failed."""
    if ctx["job_try"] == 1:
        raise Retry(defer=0.05)


@asyncjobs.job
async def metrics_stopped(ctx: dict[str, Any]) -> None:
    """Stopped by its kill switch in these tests."""


@asyncjobs.job(unique_for=60)
async def metrics_unique(ctx: dict[str, Any], n: int) -> None: ...


@asyncjobs.job
async def metrics_producer(ctx: dict[str, Any]) -> None:
    """Enqueues from inside the worker, where the worker's App counts it."""
    app = ctx["asyncjobs"]
    assert await app.enqueue(metrics_stopped) is None  # rejected: flag
    assert await app.enqueue(metrics_unique, 1) is not None
    assert await app.enqueue(metrics_unique, 1) is None  # rejected: unique


@asyncjobs.job
async def metrics_reconciled(ctx: dict[str, Any], n: int) -> None: ...


@asyncjobs.job
async def metrics_block(ctx: dict[str, Any], seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 -- blocks the worker's event loop, on purpose


if os.environ.get(WORKER_ENV):

    @asyncjobs.reconciler(job=metrics_reconciled, every=timedelta(seconds=1))
    async def metrics_rows(ctx: dict[str, Any]) -> str:
        if await ctx["redis"].set("metrics:rows-read", 1, nx=True):  # two rows, once
            return "SELECT n FROM generate_series(1, 2) AS n"
        return "SELECT 1 WHERE false"

    @asyncjobs.job(queue=PARKED)
    async def metrics_parked(ctx: dict[str, Any]) -> None: ...


# -- reading the endpoint -------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = 30.0, interval: float = 0.05, what: str
) -> T:
    """``await check()`` every ``interval`` seconds until it gives a true value; that value.
    An ``AssertionError`` naming ``what`` and the last value once ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within}s: {what} (last: {last!r})")
        await asyncio.sleep(interval)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

NAMES = {
    "asyncjobs_jobs_enqueued_total",
    "asyncjobs_jobs_rejected_total",
    "asyncjobs_jobs_skipped_total",
    "asyncjobs_jobs_succeeded_total",
    "asyncjobs_jobs_failed_total",
    "asyncjobs_jobs_retried_total",
    "asyncjobs_jobs_dead_total",
    "asyncjobs_job_duration_seconds",
    "asyncjobs_job_queue_wait_seconds",
    "asyncjobs_jobs_in_progress",
    "asyncjobs_queue_ready",
    "asyncjobs_queue_deferred",
    "asyncjobs_queue_latency_seconds",
    "asyncjobs_workers_alive",
    "asyncjobs_dead_letters",
    "asyncjobs_reconciler_rows_total",
    "asyncjobs_reconciler_enqueued_total",
}


def get(port: int, path: str) -> tuple[int, str]:
    """``GET path`` on the worker's endpoint: (status, body); (0, why) if nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError as exc:
        return 0, repr(exc)
    finally:
        conn.close()


async def aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def until_status(port: int, path: str, status: int, within: float = 30.0) -> tuple[int, str]:
    """Wait until ``GET path`` answers ``status``; (status, body)."""

    async def check() -> tuple[int, str] | None:
        got = await aget(port, path)
        return got if got[0] == status else None

    return await eventually(check, within=within, what=f"{path} answers {status}")


def parse(text: str) -> tuple[set[str], Samples]:
    """The metric names (a counter's with ``_total``) and every sample, by name and labels."""
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape(port: int) -> Samples:
    status, body = await aget(port, "/metrics")
    assert status == 200, body
    return parse(body)[1]


# -- a worker with ASYNCJOBS_METRICS_PORT ---------------------------------------


@pytest.fixture
def metrics_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "ASYNCJOBS_IMPORTS": MODULE,
        "ASYNCJOBS_METRICS_PORT": str(free_port()),
    }


async def test_a_worker_serves_every_metric_with_its_labels_and_values(
    metrics_env: dict[str, str], app: App, redis: aioredis.Redis
) -> None:
    await app.migrate()
    # Queued before the flag went on: the worker skips both.
    await app.enqueue(metrics_stopped)
    await app.enqueue(metrics_stopped)
    await app.flags.enable(asyncjobs.flag_name(metrics_stopped), reason="metrics test")
    for n in range(3):
        await app.enqueue(metrics_ok, n)
    await app.enqueue(metrics_boom, 1)
    await app.enqueue(metrics_flaky, 1)
    await app.enqueue(metrics_again)
    await app.enqueue(metrics_producer)
    # A payload naming no job this worker knows: a dead letter of job "?".
    unknown = {"t": 1, "f": "no_such_job", "a": [], "k": {}, "et": int(time.time() * 1000)}
    await redis.set("arq:job:metrics-unknown", json.dumps(unknown))
    await redis.zadd(QUEUE, {"metrics-unknown": unknown["et"]})
    # The parked queue: two ready, one deferred, no worker reads it.
    parked_since = time.time()
    await app.enqueue(metrics_ok, 10, _queue_name=PARKED)
    await app.enqueue(metrics_ok, 11, _queue_name=PARKED)
    await app.enqueue(metrics_ok, 12, _queue_name=PARKED, _defer_by=3600)

    env = {**metrics_env, "ASYNCJOBS_QUEUES": QUEUE, WORKER_ENV: "1"}
    port = int(env["ASYNCJOBS_METRICS_PORT"])
    with WorkerProcess(env, cwd=ROOT):

        async def settled() -> Samples | None:
            samples = await scrape(port)
            done = {
                ("asyncjobs_jobs_succeeded_total", "metrics_ok"): 3,
                ("asyncjobs_jobs_succeeded_total", "metrics_flaky"): 1,
                ("asyncjobs_jobs_succeeded_total", "metrics_again"): 1,
                ("asyncjobs_jobs_succeeded_total", "metrics_unique"): 1,
                ("asyncjobs_jobs_succeeded_total", "metrics_reconciled"): 2,
                ("asyncjobs_jobs_skipped_total", "metrics_stopped"): 2,
                ("asyncjobs_jobs_dead_total", "metrics_boom"): 1,
                ("asyncjobs_jobs_dead_total", "?"): 1,
            }
            reached = all(value(samples, name, job=job) == n for (name, job), n in done.items())
            idle = value(samples, "asyncjobs_jobs_in_progress", queue=QUEUE) == 0
            return samples if reached and idle else None

        samples = await eventually(settled, within=60, interval=0.2, what="the mix has run")
        status, body = await aget(port, "/metrics")

    assert status == 200
    names, _ = parse(body)
    assert names == NAMES

    def at(name: str, **labels: str) -> float | None:
        return value(samples, name, **labels)

    assert at("asyncjobs_jobs_enqueued_total", job="metrics_unique", queue=QUEUE) == 1
    assert at("asyncjobs_jobs_enqueued_total", job="metrics_reconciled", queue=QUEUE) == 2
    assert at("asyncjobs_jobs_rejected_total", job="metrics_stopped", reason="flag") == 1
    assert at("asyncjobs_jobs_rejected_total", job="metrics_unique", reason="unique") == 1
    assert at("asyncjobs_jobs_succeeded_total", job="metrics_producer") == 1
    assert at("asyncjobs_jobs_succeeded_total", job="metrics_stopped") == 0  # skipped instead
    assert at("asyncjobs_jobs_succeeded_total", job="metrics_boom") == 0
    failed = {
        dict(labels)["job"]: (dict(labels)["error"], v)
        for (name, labels), v in samples.items()
        if name == "asyncjobs_jobs_failed_total"
    }
    assert failed == {"metrics_boom": ("ValueError", 1), "metrics_flaky": ("KeyError", 1)}
    assert at("asyncjobs_jobs_retried_total", job="metrics_flaky") == 1
    assert at("asyncjobs_jobs_retried_total", job="metrics_again") == 1  # asked: not a failure
    assert at("asyncjobs_jobs_retried_total", job="metrics_boom") == 0
    assert at("asyncjobs_jobs_dead_total", job="metrics_flaky") == 0
    # Every try that ran is timed; a skipped copy is not. The wait is the first try's.
    durations = {
        "metrics_ok": 3,
        "metrics_boom": 1,
        "metrics_flaky": 2,
        "metrics_again": 2,
        "metrics_stopped": 0,
    }
    for job, count in durations.items():
        assert at("asyncjobs_job_duration_seconds_count", job=job) == count, job
    assert at("asyncjobs_job_duration_seconds_bucket", job="metrics_ok", le="+Inf") == 3
    waits = {"metrics_ok": 3, "metrics_flaky": 1, "metrics_again": 1, "metrics_stopped": 2}
    for job, count in waits.items():
        assert at("asyncjobs_job_queue_wait_seconds_count", job=job) == count, job
    assert at("asyncjobs_jobs_in_progress", queue=QUEUE) == 0
    assert at("asyncjobs_queue_ready", queue=PARKED) == 2
    assert at("asyncjobs_queue_deferred", queue=PARKED) == 1
    latency = at("asyncjobs_queue_latency_seconds", queue=PARKED)
    assert latency is not None
    assert 0 < latency <= time.time() - parked_since + 1
    assert at("asyncjobs_queue_ready", queue=QUEUE) == 0
    assert at("asyncjobs_workers_alive") == 1
    assert at("asyncjobs_dead_letters", job="metrics_boom") == 1
    assert at("asyncjobs_dead_letters", job="no_such_job") == 1
    assert at("asyncjobs_reconciler_rows_total", reconciler="metrics_rows") == 2
    assert at("asyncjobs_reconciler_enqueued_total", reconciler="metrics_rows") == 2


async def test_healthz_is_503_while_a_job_blocks_the_event_loop_and_200_after(
    metrics_env: dict[str, str], app: App
) -> None:
    # Heartbeat 0.5 s: the health window is three beats, 1.5 s.
    env = {**metrics_env, "ASYNCJOBS_HEARTBEAT": "0.5"}
    port = int(env["ASYNCJOBS_METRICS_PORT"])
    with WorkerProcess(env, cwd=ROOT):
        assert await until_status(port, "/healthz", 200) == (200, "ok\n")
        await app.enqueue(metrics_block, 5.0)

        async def unhealthy() -> str | None:
            status, body = await aget(port, "/healthz")
            return body if status == 503 else None

        blocked = await eventually(unhealthy, within=10, what="/healthz turns 503")
        # /metrics is served off the loop too: it answers, and shows the blocking job.
        samples = await scrape(port)
        assert await until_status(port, "/healthz", 200, within=20) == (200, "ok\n")
        status, ready = await aget(port, "/readyz")
    assert "event loop is blocked" in blocked
    assert value(samples, "asyncjobs_jobs_in_progress", queue=QUEUE) == 1
    assert (status, ready) == (200, "ready\n")


class GatedProxy:
    """A TCP proxy to ``target`` that accepts connections but holds each one, forwarding
    nothing, until :meth:`open`: a server that is up but not reachable yet."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = parts._replace(
            netloc=parts.netloc.replace(f":{parts.port}", f":{self._listener.getsockname()[1]}")
        ).geturl()
        self._open = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        self._open.wait()
        try:
            upstream = socket.create_connection(self._target)
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._open.set()


@pytest.fixture
def gated(redis_url: str, database_url: str) -> Iterator[tuple[GatedProxy, GatedProxy]]:
    proxies = GatedProxy(redis_url), GatedProxy(database_url)
    yield proxies
    for proxy in proxies:
        proxy.close()


async def test_readyz_is_503_until_redis_and_postgres_are_reached(
    metrics_env: dict[str, str], gated: tuple[GatedProxy, GatedProxy]
) -> None:
    redis_gate, postgres_gate = gated
    env = {
        **metrics_env,
        "ASYNCJOBS_REDIS_URL": redis_gate.url,
        "ASYNCJOBS_DATABASE_URL": postgres_gate.url,
        "ASYNCJOBS_DATABASE_TIMEOUT": "1",
    }
    port = int(env["ASYNCJOBS_METRICS_PORT"])
    worker = WorkerProcess(env, cwd=ROOT)
    worker.start(wait_ready=0)
    try:

        async def answered(path: str) -> tuple[int, str] | None:
            status, body = await aget(port, path)
            return (status, body) if status else None

        before = await eventually(lambda: answered("/readyz"), what="the endpoint answers")
        health_before = await aget(port, "/healthz")
        redis_gate.open()

        async def waiting_for_postgres() -> str | None:
            status, body = await aget(port, "/readyz")
            return body if status == 503 and "PostgreSQL" in body else None

        postgres_before = await eventually(waiting_for_postgres, what="Redis reached")
        postgres_gate.open()
        after = await until_status(port, "/readyz", 200)

        async def started() -> bool:
            lines = [json.loads(line) for line in list(worker.lines) if line.startswith("{")]
            return any(line["event"] == "worker.started" for line in lines)

        await eventually(started, what="the worker logged worker.started")
    finally:
        worker.stop()
    assert before[0] == 503
    assert "Redis" in before[1]
    assert health_before[0] == 503
    assert postgres_before.startswith("PostgreSQL not reached yet")
    assert after == (200, "ready\n")


async def test_a_scrape_does_not_wait_for_an_unreachable_redis_or_postgres(
    gated: tuple[GatedProxy, GatedProxy], app: App
) -> None:
    from asyncjobs._metrics_scrape import SCRAPE_TIMEOUT_S, QueueCollector

    redis_gate, postgres_gate = gated
    settings = asyncjobs.Settings(redis_url=redis_gate.url, database_url=postgres_gate.url)
    await app.migrate()
    collector = QueueCollector(App(settings))
    try:

        async def scrape_gauges() -> Samples:
            bound = SCRAPE_TIMEOUT_S + 3  # the collector's own bound, and some slack
            families = await asyncio.wait_for(asyncio.to_thread(collector.collect), bound)
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in families
                for s in family.samples
            }

        assert await scrape_gauges() == {}  # both held: left out, not waited for
        redis_gate.open()
        postgres_gate.open()

        async def read() -> Samples:
            samples = await scrape_gauges()
            return samples if value(samples, "asyncjobs_workers_alive") is not None else {}

        samples = await eventually(read, what="the gauges once both answer")
    finally:
        await asyncio.to_thread(collector.close)
    assert value(samples, "asyncjobs_queue_ready", queue=QUEUE) == 0
    assert value(samples, "asyncjobs_workers_alive") == 0


# -- bad input: one clear line ----------------------------------------------------


def _worker_once(env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``arq asyncjobs.WorkerSettings`` (or ``python -c code`` running it) with only ``env``'s
    ASYNCJOBS_* variables; it is expected to exit at once."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    argv = ["-c", code] if code is not None else ["-m", "arq", "asyncjobs.WorkerSettings"]
    return subprocess.run(
        [sys.executable, *argv],
        env={**base, "ASYNCJOBS_LOG_FORMAT": "json", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1, result
    assert len(lines) == 1, lines
    event = json.loads(lines[0])
    assert event["event"] == "worker.misconfigured"
    return str(event["error"])


def test_a_metrics_port_in_use_is_one_line_naming_the_setting(
    metrics_env: dict[str, str],
) -> None:
    with socket.create_server(("", 0)) as taken:
        port = taken.getsockname()[1]
        error = _one_error(_worker_once({**metrics_env, "ASYNCJOBS_METRICS_PORT": str(port)}))
    assert f"ASYNCJOBS_METRICS_PORT={port}" in error
    assert "in use" in error


HIDE_PROMETHEUS = "import sys; sys.modules['prometheus_client'] = None; "


def test_a_worker_asked_for_metrics_without_prometheus_client_names_the_extra(
    metrics_env: dict[str, str],
) -> None:
    code = HIDE_PROMETHEUS + (
        "sys.argv = ['arq', 'asyncjobs.WorkerSettings']; from arq.cli import cli; cli()"
    )
    env = {**metrics_env, "ASYNCJOBS_IMPORTS": "tests.workerjobs"}  # this module needs it
    error = _one_error(_worker_once(env, code))
    assert "ASYNCJOBS_METRICS_PORT" in error
    assert "pip install 'asyncjobs[metrics]'" in error


def test_the_package_works_without_prometheus_client_and_the_module_names_the_extra() -> None:
    code = HIDE_PROMETHEUS + (
        "import asyncjobs, asyncjobs.runner, asyncjobs._worker\n"
        "app = asyncjobs.App(asyncjobs.Settings())\n"
        "assert not app.instruments.enabled\n"
        "try:\n    import asyncjobs.metrics\nexcept ImportError as exc:\n    print(exc)\n"
    )
    result = _worker_once({}, code)
    assert result.returncode == 0, result.stderr
    assert "pip install 'asyncjobs[metrics]'" in result.stdout


# -- how a run's end is told apart -------------------------------------------------------


def _raised(make: Callable[[], BaseException]) -> BaseException:
    try:
        raise make()
    except BaseException as exc:
        return exc


def test_the_meter_tells_a_failed_try_from_a_retry_asked_for_and_a_wait_for_a_lock() -> None:
    """The three ways the execution path ends a try in arq's Retry (asyncjobs._execution)."""
    from asyncjobs._execution import Locked
    from asyncjobs.metrics import _Instruments

    instruments = _Instruments()
    meter = instruments.job("job")

    def failed_try() -> BaseException:  # Outcome: Retry(defer=...) from the error
        try:
            raise TimeoutError("slow")
        except TimeoutError as exc:
            raise Retry(defer=1) from exc

    def lock_wait() -> BaseException:  # Outcome: Retry(...) from None, over a Locked
        try:
            raise Locked("invoice:1", "held")
        except Locked:
            raise Retry(defer=1) from None

    for make in (failed_try, lambda: Retry(defer=1), lock_wait):
        meter.retrying(_raised(make), meter.started(QUEUE, 0, 1))
        meter.ended(QUEUE)
    meter.failed(ValueError("last"), meter.started(QUEUE, 0, 2), dead=True)
    meter.ended(QUEUE)
    samples: Samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in instruments.families()
        for s in family.samples
    }
    assert value(samples, "asyncjobs_jobs_retried_total", job="job") == 2
    assert value(samples, "asyncjobs_jobs_failed_total", job="job", error="TimeoutError") == 1
    assert value(samples, "asyncjobs_jobs_failed_total", job="job", error="ValueError") == 1
    assert value(samples, "asyncjobs_jobs_dead_total", job="job") == 1
    # Timed: the failed try, the one that asked, the last; not the wait for the lock.
    assert value(samples, "asyncjobs_job_duration_seconds_count", job="job") == 3
    assert value(samples, "asyncjobs_jobs_in_progress", queue=QUEUE) == 0


# -- a producer ---------------------------------------------------------------------


async def test_a_producer_counts_its_enqueues_and_serves_them_to_an_asgi_mount(
    app: App, settings: asyncjobs.Settings
) -> None:
    from asyncjobs import metrics

    registry = metrics.registry

    def now(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    watched = [
        ("asyncjobs_jobs_enqueued_total", {"job": "metrics_ok", "queue": QUEUE}),
        ("asyncjobs_jobs_enqueued_total", {"job": "metrics_unique", "queue": QUEUE}),
        ("asyncjobs_jobs_rejected_total", {"job": "metrics_ok", "reason": "duplicate_id"}),
        ("asyncjobs_jobs_rejected_total", {"job": "metrics_unique", "reason": "unique"}),
        ("asyncjobs_jobs_rejected_total", {"job": "metrics_stopped", "reason": "flag"}),
    ]
    before = [now(name, **labels) for name, labels in watched]
    async with App(settings) as quiet:  # not enabled: counts nothing
        await quiet.enqueue(metrics_ok, 0)
    assert [now(name, **labels) for name, labels in watched] == before

    metrics.enable(app)
    await app.migrate()
    await app.enqueue(metrics_ok, 1, _job_id="metrics-one")
    assert await app.enqueue(metrics_ok, 1, _job_id="metrics-one") is None
    await app.enqueue_many(metrics_ok, [(2,), (3,)])
    first, second = await app.enqueue_many(metrics_unique, [(5,), (5,)])
    assert first is not None
    assert second is None  # the first took the lock, in the same call
    await app.flags.enable(asyncjobs.flag_name(metrics_stopped))
    assert await app.enqueue(metrics_stopped) is None

    transport = httpx.ASGITransport(app=metrics.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://producer") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    _, samples = parse(response.text)
    after = [value(samples, name, **labels) or 0.0 for name, labels in watched]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 1, 1, 1]
