"""Prometheus metrics: what asyncjobs counts, in a registry of its own.

Needs prometheus-client (``pip install 'asyncjobs[metrics]'``); importing this
module without it raises ``ImportError`` naming the extra.

- **Workers**: set ``ASYNCJOBS_METRICS_PORT`` and each worker process serves
  ``/metrics``, ``/healthz`` and ``/readyz`` on that port itself, with the queue,
  worker and dead-letter gauges read from Redis and PostgreSQL at scrape time.
- **Producers** (web apps): ``asyncjobs.metrics.enable(app)`` (or ``enable()`` for
  the default App) counts that App's enqueues; mount :func:`asgi_app` at
  ``/metrics``, or expose :data:`registry` your own way.

Everything asyncjobs measures is in :data:`registry`, a ``CollectorRegistry`` of its
own rather than prometheus_client's global ``REGISTRY``: nothing of asyncjobs shows
up in an application's own exposition, and nothing of the application's in
asyncjobs', unless asked (``prometheus_client.REGISTRY.register(asyncjobs.metrics.collector)``
adds asyncjobs' series to the global registry).

The series are updated in place with no per-call allocation: each job's label
values are bound once (:meth:`Instruments.job`), and a job run costs a few
attribute increments. The worker side's series are written only by the worker's
event loop; the enqueue side's under a lock, as a process may enqueue from
several threads. The metric names, labels and meanings are listed in the README
("Metrics and health").
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

try:
    from prometheus_client import CollectorRegistry, make_asgi_app
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # the one clear error the core package's users get
    raise ImportError(
        "asyncjobs' metrics need prometheus-client, which is not installed: "
        "pip install 'asyncjobs[metrics]'"
    ) from exc

from ._app import get_app
from ._arq import Retry
from ._core import Core
from ._execution import Locked
from ._metrics_hooks import Instruments, JobMeter

__all__ = ["asgi_app", "collector", "enable", "exposition", "registry"]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
"""``asyncjobs_job_duration_seconds``: from a no-op job to the default 300 s timeout and past."""
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600)
"""``asyncjobs_job_queue_wait_seconds``: from a woken idle worker (about 1 ms) to deferrals."""

_LOCK = threading.Lock()
"""Guards the enqueue side's series (a process may enqueue from several threads)."""


class _Value:
    """One series of a counter or gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Histogram:
    """One series of a histogram: a count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*map(float, bounds), float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative buckets as Prometheus wants them, and the sum."""
        counts, total = list(self.counts), self.sum  # list(): one copy, not torn by a writer
        cumulative = 0.0
        out: list[tuple[str, float]] = []
        for bound, count in zip(self.bounds, counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return out, total


class _Meter(JobMeter):
    """One job's series, bound to its name once; see :class:`JobMeter` for the calls."""

    __slots__ = (
        "_instruments",
        "_running",
        "dead_total",
        "duration",
        "enqueued_total",
        "failed_total",
        "name",
        "ran",
        "rejected_total",
        "retried_total",
        "skipped_total",
        "succeeded_total",
        "wait",
    )
    enabled: ClassVar[bool] = True

    def __init__(self, instruments: _Instruments, name: str) -> None:
        self._instruments = instruments
        self._running: dict[str, _Value] = {}  # the in-progress series, shared by all jobs
        self.name = name
        self.ran = False
        """Whether a worker ran (or skipped) it here: only then are its run series shown."""
        self.enqueued_total: dict[str, _Value] = {}
        self.rejected_total: dict[str, _Value] = {}
        self.failed_total: dict[str, _Value] = {}
        self.succeeded_total = _Value()
        self.retried_total = _Value()
        self.dead_total = _Value()
        self.skipped_total = _Value()
        self.duration = _Histogram(DURATION_BUCKETS)
        self.wait = _Histogram(WAIT_BUCKETS)

    # -- the enqueue side (locked) --

    def enqueued(self, queue: str, count: int = 1) -> None:
        with _LOCK:
            series = self.enqueued_total.get(queue) or self.enqueued_total.setdefault(
                queue, _Value()
            )
            series.value += count

    def rejected(self, reason: str, count: int = 1) -> None:
        if count:
            with _LOCK:
                series = self.rejected_total.get(reason) or self.rejected_total.setdefault(
                    reason, _Value()
                )
                series.value += count

    # -- the worker side (the worker's loop alone) --

    def skipped(self, job_id: str) -> None:
        self.ran = True
        self.skipped_total.value += 1
        self._instruments.skipped_ids.add(job_id)

    # started, succeeded and ended run for every job: their histogram updates are
    # written out rather than called (_Histogram.observe), the in-progress series kept
    # here by queue.

    def started(self, queue: str, enqueue_ms: int, job_try: int) -> float:
        self.ran = True
        running = self._running.get(queue) or self._in_progress(queue)
        running.value += 1
        if job_try == 1 and enqueue_ms > 0:  # a retry's wait would include its backoff
            wait = time.time() - enqueue_ms / 1000
            if wait < 0:  # another host's clock
                wait = 0.0
            histogram = self.wait
            histogram.counts[bisect_left(histogram.bounds, wait)] += 1
            histogram.sum += wait
        return time.perf_counter()

    def _in_progress(self, queue: str) -> _Value:
        series = self._running[queue] = self._instruments.running(queue)
        return series

    def succeeded(self, job_id: str, start: float) -> None:
        skipped = self._instruments.skipped_ids
        if skipped and job_id in skipped:  # the kill switch's skip returns like a success
            skipped.discard(job_id)
            return
        self.succeeded_total.value += 1
        seconds = time.perf_counter() - start
        histogram = self.duration
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds

    def retrying(self, retry: BaseException, start: float) -> None:
        # The execution path (asyncjobs._execution.Outcome) raises arq's Retry from the
        # error for a failed try it retries, from None (over a Locked) for a wait for the
        # job's lock, and passes a job's own Retry through.
        cause = retry.__cause__
        if cause is None and isinstance(retry.__context__, Locked):
            return  # not a try: the job waits for its lock
        if isinstance(cause, Exception) and not isinstance(cause, Retry):
            self._failed(type(cause).__name__)
        self.retried_total.value += 1
        self.duration.observe(time.perf_counter() - start)

    def failed(self, error: BaseException, start: float, *, dead: bool) -> None:
        self._failed(type(error).__name__)
        self.duration.observe(time.perf_counter() - start)
        if dead:
            self.dead_total.value += 1

    def _failed(self, error: str) -> None:
        series = self.failed_total.get(error)
        if series is None:
            series = self.failed_total.setdefault(error, _Value())
        series.value += 1

    def dead(self) -> None:
        self.ran = True
        self.dead_total.value += 1

    def ended(self, queue: str) -> None:
        running = self._running.get(queue) or self._in_progress(queue)
        running.value -= 1


class _Instruments(Instruments):
    """The Prometheus-backed instruments every enabled App shares (the series are the
    process's, as in any Prometheus client)."""

    enabled: ClassVar[bool] = True

    def __init__(self) -> None:
        self._meters: dict[str, _Meter] = {}
        self._running: dict[str, _Value] = {}
        self._reconcilers: dict[str, tuple[_Value, _Value]] = {}
        self.skipped_ids: set[str] = set()
        """Runs the kill switch skipped, until their end is reported."""

    def job(self, name: str) -> JobMeter:
        meter = self._meters.get(name)
        if meter is None:
            meter = self._meters.setdefault(name, _Meter(self, name))
        return meter

    def running(self, queue: str) -> _Value:
        """The in-progress series of ``queue``."""
        series = self._running.get(queue)
        if series is None:
            series = self._running.setdefault(queue, _Value())
        return series

    def reconciled(self, reconciler: str, rows: int, enqueued: int) -> None:
        with _LOCK:
            pair = self._reconcilers.setdefault(reconciler, (_Value(), _Value()))
            pair[0].value += rows
            pair[1].value += enqueued

    def families(self) -> Iterator[Metric]:  # noqa: C901 -- one short loop per family, in README order
        """Every family, with a series for each label set seen so far."""
        meters = sorted(self._meters.items())
        ran = [(name, m) for name, m in meters if m.ran]

        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        family = counter("asyncjobs_jobs_enqueued", "Jobs written to a queue.", ["job", "queue"])
        for name, m in meters:
            for queue, series in sorted(m.enqueued_total.items()):
                family.add_metric([name, queue], series.value)
        yield family
        family = counter(
            "asyncjobs_jobs_rejected",
            "Enqueues refused: reason flag (kill switch), unique or duplicate_id.",
            ["job", "reason"],
        )
        for name, m in meters:
            for reason, series in sorted(m.rejected_total.items()):
                family.add_metric([name, reason], series.value)
        yield family
        for metric, attribute, doc in _RUN_COUNTERS:
            family = counter(metric, doc, ["job"])
            for name, m in ran:
                family.add_metric([name], getattr(m, attribute).value)
            yield family
        family = counter(
            "asyncjobs_jobs_failed", "Tries that raised, by exception class.", ["job", "error"]
        )
        for name, m in ran:
            for error, series in sorted(m.failed_total.items()):
                family.add_metric([name, error], series.value)
        yield family
        for metric, attribute, doc in _HISTOGRAMS:
            histogram = HistogramMetricFamily(metric, doc, labels=["job"])
            for name, m in ran:
                buckets, total = getattr(m, attribute).buckets()
                histogram.add_metric([name], buckets, total)
            yield histogram
        gauge = GaugeMetricFamily(
            "asyncjobs_jobs_in_progress", "Jobs this process runs now.", labels=["queue"]
        )
        for queue, series in sorted(self._running.items()):
            gauge.add_metric([queue], series.value)
        yield gauge
        rows = counter("asyncjobs_reconciler_rows", "Rows reconcilers read.", ["reconciler"])
        enqueued = counter(
            "asyncjobs_reconciler_enqueued", "Jobs reconcilers enqueued.", ["reconciler"]
        )
        for reconciler, (read, written) in sorted(self._reconcilers.items()):
            rows.add_metric([reconciler], read.value)
            enqueued.add_metric([reconciler], written.value)
        yield rows
        yield enqueued


_RUN_COUNTERS = (
    ("asyncjobs_jobs_skipped", "skipped_total", "Queued copies the kill switch skipped."),
    ("asyncjobs_jobs_succeeded", "succeeded_total", "Runs that returned."),
    ("asyncjobs_jobs_retried", "retried_total", "Tries followed by another try."),
    ("asyncjobs_jobs_dead", "dead_total", "Jobs moved to the dead letters."),
)
_HISTOGRAMS = (
    ("asyncjobs_job_duration_seconds", "duration", "Seconds a try ran (succeeded or failed)."),
    (
        "asyncjobs_job_queue_wait_seconds",
        "wait",
        "Seconds from the enqueue (the payload's time) to the first try's start.",
    ),
)


class _Collector:
    """A prometheus Collector of the instruments' families."""

    def __init__(self, source: Callable[[], Iterator[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        return self._source()


_instruments = _Instruments()
"""The instruments :func:`enable` gives an App."""
collector = _Collector(_instruments.families)
"""asyncjobs' counters, histograms and in-progress gauges as one prometheus Collector."""
registry = CollectorRegistry(auto_describe=True)
"""asyncjobs' own registry: :data:`collector`, plus in a worker serving
``ASYNCJOBS_METRICS_PORT`` the queue, worker and dead-letter gauges read at scrape time."""
registry.register(collector)


def enable(app: Core | None = None) -> None:
    """Count what ``app`` (default: the default App) enqueues and runs in :data:`registry`.

    A worker started with ``ASYNCJOBS_METRICS_PORT`` does this itself. Enabling an App
    twice changes nothing.
    """
    (app if app is not None else get_app()).instruments = _instruments


def asgi_app() -> Callable[..., Any]:
    """An ASGI app serving :data:`registry` in Prometheus' text format: mount it at
    ``/metrics`` (e.g. Starlette's ``Mount("/metrics", asyncjobs.metrics.asgi_app())``)."""
    app: Callable[..., Any] = make_asgi_app(registry=registry)
    return app


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """:data:`registry` as the body of a ``/metrics`` answer and its content type, in the
    format an ``Accept`` header asks for (Prometheus' text format by default)."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type
