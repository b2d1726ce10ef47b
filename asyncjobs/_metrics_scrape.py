"""The gauges a worker's ``/metrics`` reads at scrape time: queues, workers, dead letters.

:class:`QueueCollector` is a prometheus Collector. At each scrape it reads, with
:mod:`asyncjobs._status` (the numbers ``asyncjobs status`` shows), each queue's
ready and deferred counts and the age of its oldest ready job, the live workers
(one atomic script and two pipelines, whatever the queues hold: counts, never a
scan of the jobs), and the dead letters per job (one grouped count on an index
of PostgreSQL).

Why a loop and connections of its own, in a thread of its own: a scrape is
answered from the metrics server's thread, and must neither wait for the worker's
event loop (a blocked loop is what ``/healthz`` reports, and ``/metrics`` should
still answer then) nor take a connection that jobs are waiting for. Each part is
bounded by ``timeout`` seconds: a slow or unreachable Redis or PostgreSQL leaves
that part out of the scrape (logged ``metrics.scrape_failed``, once per outage)
instead of hanging it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import structlog
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ._core import Core
from ._status import QueueStats, dead_letter_counts, read_redis

_log = structlog.get_logger("asyncjobs.metrics")
T = TypeVar("T")

SCRAPE_FAILED = "metrics.scrape_failed"
SCRAPE_RECOVERED = "metrics.scrape_recovered"
SCRAPE_TIMEOUT_S = 2.0
"""The longest a scrape waits for Redis or PostgreSQL (each; they are read at once)."""


class QueueCollector:
    """``asyncjobs_queue_ready``, ``_deferred``, ``_latency_seconds`` (per queue),
    ``asyncjobs_workers_alive`` and ``asyncjobs_dead_letters`` (per job), read at each
    scrape for ``app``'s settings, registry and queues."""

    def __init__(self, app: Core, timeout: float = SCRAPE_TIMEOUT_S) -> None:
        # One connection each is enough: scrapes are seconds apart.
        settings = dataclasses.replace(app.settings, database_pool_size=1)
        self._core = Core(settings, app.registry)
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="asyncjobs.metrics.scrape", daemon=True
        )
        self._thread.start()
        self._failing: set[str] = set()

    def describe(self) -> Iterator[Metric]:
        """The families, without reading anything (for the registry's name check)."""
        return iter(_families([], None, None))

    def collect(self) -> Iterator[Metric]:
        """Read the numbers now (at most ``timeout`` seconds) and give the families."""
        future = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
        try:
            queues, workers, dead = future.result(self._timeout + 1.0)
        except Exception as exc:  # the loop itself is stuck: give the families empty
            future.cancel()
            self._report("scrape", exc)
            queues, workers, dead = [], None, None
        return iter(_families(queues, workers, dead))

    async def _read(self) -> tuple[list[QueueStats], int | None, dict[str, int] | None]:
        redis = self._bounded("redis", read_redis(self._core))
        database = None
        if self._core.settings.database_url is not None:
            database = self._bounded("postgres", dead_letter_counts(self._core))
        redis_part, dead = await asyncio.gather(redis, database or _none())
        queues, workers = redis_part if redis_part is not None else ([], None)
        return queues, None if workers is None else len(workers), dead

    async def _bounded(self, part: str, read: Awaitable[T]) -> T | None:
        try:
            async with asyncio.timeout(self._timeout):
                result = await read
        except Exception as exc:
            self._report(part, exc)
            return None
        if part in self._failing:
            self._failing.discard(part)
            _log.info(SCRAPE_RECOVERED, part=part)
        return result

    def _report(self, part: str, exc: BaseException) -> None:
        if part not in self._failing:  # once per outage, not at every scrape
            self._failing.add(part)
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            _log.warning(SCRAPE_FAILED, part=part, error=error, timeout_s=self._timeout)

    def close(self) -> None:
        """Close the connections and stop the thread (blocks up to ``timeout`` seconds)."""
        if self._loop.is_closed():
            return
        closing = asyncio.run_coroutine_threadsafe(self._core.close(), self._loop)
        try:
            closing.result(self._timeout)
        except Exception:  # connections to a dead server: dropped with the loop
            closing.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        if not self._thread.is_alive():
            self._loop.close()


async def _none() -> None:
    return None


def _families(
    queues: list[QueueStats], workers: int | None, dead: dict[str, int] | None
) -> list[Metric]:
    ready = GaugeMetricFamily(
        "asyncjobs_queue_ready", "Due jobs no live worker holds.", labels=["queue"]
    )
    deferred = GaugeMetricFamily(
        "asyncjobs_queue_deferred", "Jobs not due yet (deferred or backing off).", labels=["queue"]
    )
    latency = GaugeMetricFamily(
        "asyncjobs_queue_latency_seconds",
        "Seconds since the oldest ready job became due (0: none ready).",
        labels=["queue"],
    )
    for stats in queues:
        ready.add_metric([stats.name], stats.ready)
        deferred.add_metric([stats.name], stats.deferred)
        latency.add_metric([stats.name], stats.oldest_ready_age or 0.0)
    alive = GaugeMetricFamily("asyncjobs_workers_alive", "Workers whose registration is live.")
    if workers is not None:
        alive.add_metric([], workers)
    letters = GaugeMetricFamily(
        "asyncjobs_dead_letters", "Dead letters kept in PostgreSQL.", labels=["job"]
    )
    for job, count in sorted((dead or {}).items()):
        letters.add_metric([job], count)
    found: list[Any] = [ready, deferred, latency, alive, letters]
    return found
