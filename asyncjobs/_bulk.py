"""Bulk enqueue: many jobs of one kind, through the client chain, 1,000 per round trip.

Each item becomes one job. An item is a tuple of positional arguments, an
:class:`Args` (positional and keyword arguments, and per-job options such as
``_job_id``), or any other value, which is the job's one argument. Items may
come from any iterable or async iterable and are consumed batch by batch, so
memory stays bounded by one batch whatever the count (use :func:`enqueue_stream`
for millions; :func:`enqueue_many` keeps every result in a list).

Every job passes the client middleware (the kill switch, uniqueness ...); the
chain's innermost step collects the job instead of writing it, and the batch
is written by one Lua call in which each job is written whole or not at all.
Inside a bulk call ``call_next(request)`` therefore returns a placeholder, not
the arq Job: middleware that needs the Job should only decide before calling
next. An item that cannot be enqueued (bad arguments, not serializable) raises
before anything of its batch is written; batches before it stay enqueued, and
the error says how many jobs that was.

``_connection=conn`` (an asyncpg connection in a transaction) writes each batch to
the outbox in that transaction (one round trip per batch), for the relay to move
to Redis once it commits (:mod:`asyncjobs._outbox`); it is given to the call, not
per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from . import _logs as logs
from ._arq import Job
from ._core import Core, EnqueueRequest
from ._enqueue import (
    NOT_UNIQUE,
    WRITTEN,
    Prepared,
    SentWrite,
    prepare,
    send_prepared,
    split_options,
)
from ._exceptions import EnqueueError, InvalidOptionError
from ._metrics_hooks import NO_METER, JobMeter
from ._outbox import OutboxWrite, write_rows

if TYPE_CHECKING:
    from ._jobs import JobSpec

MAX_BATCH = 10_000
_log = structlog.get_logger("asyncjobs.bulk")


class Args:
    """The arguments of one job in a bulk call: ``Args(42, note="x", _job_id="invoice-42")``."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    @classmethod
    def of(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
        """``Args(*args, **kwargs)`` without unpacking and repacking both (a hot path)."""
        made = cls.__new__(cls)
        made.args = args
        made.kwargs = kwargs
        return made

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Args({', '.join(parts)})"


@dataclass(slots=True)
class BulkStats:
    """Counts of a bulk call, filled in as its batches are written."""

    written: int = 0
    duplicates: int = 0
    rejected: int = 0


class _Pending:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Collector:
    """The batch being collected by the chain's innermost step; handed off when full."""

    __slots__ = ("batch",)

    def __init__(self) -> None:
        self.batch: list[Prepared] = []


_collector: contextvars.ContextVar[_Collector] = contextvars.ContextVar("asyncjobs_bulk_batch")


async def _collect(request: EnqueueRequest) -> _Pending:
    batch = _collector.get().batch
    batch.append(prepare(request))
    return _Pending(len(batch) - 1)


def _source(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterable[Any]:
    if isinstance(items, AsyncIterable):
        return items  # iterated directly: no extra generator hop per item
    if isinstance(items, Iterable) and not isinstance(items, str | bytes | dict):
        return _from_sync(items)
    raise EnqueueError(
        f"enqueue_many takes an iterable or async iterable of job arguments, not "
        f"{type(items).__name__}; e.g. [(1,), (2,)] or a generator of tuples"
    )


async def _from_sync(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _split_item(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, Args):
        return item.args, item.kwargs
    if isinstance(item, tuple):
        return item, {}
    return (item,), {}


async def enqueue_stream(  # noqa: C901 -- one loop: batching, overlap of sends, and every way a stream ends
    app: Core,
    job: Any,
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    batch_size: int = 1000,
    stats: BulkStats | None = None,
    **options: Any,
) -> AsyncIterator[list[Job | None]]:
    """Enqueue one job per item; yield each batch's results (Job, or None if rejected).

    ``stats``, if given, is updated with the written, duplicate and rejected counts.
    A full batch is sent to Redis and the next one is prepared while Redis runs
    it; its results are yielded once its reply is in, so at most one batch is
    in flight and results come in input order.
    """
    spec: JobSpec = app.registry.resolve(job)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise InvalidOptionError(f"batch_size must be a whole number from 1 to {MAX_BATCH}")
    not_options = [k for k in options if not k.startswith("_")]
    if not_options:
        raise EnqueueError(
            f"enqueue_many({spec.name!r}) got {', '.join(not_options)}: job arguments go in the "
            "items (use Args(..., key=value) for keyword arguments); shared options start with '_'"
        )
    options = split_options(spec, (), options, bind=False)[1]
    connection = options.get("_connection")
    chain = app.client_chain(_collect)
    done = 0
    collector = _Collector()
    results: list[Any] = []
    in_flight: _InFlight | None = None
    token = _collector.set(collector)
    try:
        index = 0
        async for item in _source(items):
            args, kwargs = _split_item(item)
            try:
                job_kwargs, job_options = split_options(spec, args, kwargs)
                if "_connection" in job_options:
                    raise InvalidOptionError(
                        "_connection goes to the enqueue_many call itself, not to one item"
                    )
                if options:
                    if job_options:
                        job_options = split_options(
                            spec, (), {**options, **job_options}, bind=False
                        )[1]
                    else:
                        job_options = options.copy()
                results.append(
                    await chain(EnqueueRequest(app, spec, args, job_kwargs, job_options))
                )
            except EnqueueError as exc:
                if in_flight is not None:  # the batch before this one is enqueued first
                    done += len(await in_flight.finish(stats))
                    in_flight = None
                raise type(exc)(
                    f"item {index} ({item!r}): {exc} -- {done} job(s) of earlier batches were "
                    "enqueued; nothing of this batch was written"
                ) from exc
            index += 1
            if len(results) >= batch_size:
                if in_flight is not None:
                    written = await in_flight.finish(stats)
                    in_flight = None
                    done += len(written)
                    yield written
                in_flight = await _InFlight.send(
                    app, spec, collector.batch, results, done, connection
                )
                collector.batch = []
                results = []
        if in_flight is not None:
            written = await in_flight.finish(stats)
            in_flight = None
            done += len(written)
            yield written
        if results:
            last = await _InFlight.send(app, spec, collector.batch, results, done, connection)
            yield await last.finish(stats)
    except BaseException as exc:
        if in_flight is not None:
            stop = isinstance(exc, asyncio.CancelledError | GeneratorExit)
            await in_flight.abandon(stats, cancel=stop)
        raise
    finally:
        _collector.reset(token)


class _InFlight:
    """A batch whose write is sent; its reply is read once the next batch is prepared."""

    __slots__ = ("batch", "meter", "results", "sent", "spec")

    def __init__(
        self,
        spec: JobSpec,
        batch: list[Prepared],
        results: list[Any],
        sent: SentWrite | OutboxWrite | None,
        meter: JobMeter = NO_METER,
    ) -> None:
        self.spec = spec
        self.batch = batch
        self.results = results
        self.sent = sent
        self.meter = meter

    @classmethod
    async def send(
        cls,
        app: Core,
        spec: JobSpec,
        batch: list[Prepared],
        results: list[Any],
        done: int,
        connection: Any = None,
    ) -> _InFlight:
        sent: SentWrite | OutboxWrite | None = None
        if batch and connection is not None:  # counted as enqueued by the relay
            redis = await app.redis()  # a missing Redis URL fails before anything is written
            await write_rows(connection, batch, [spec.name] * len(batch))
            return cls(spec, batch, results, OutboxWrite(redis, len(batch)))
        if batch:  # else every job of the batch was rejected by middleware
            what = (
                f"the batch of {len(batch)} job(s) may not have been (each job is written whole "
                f"or not at all; {done} job(s) of earlier batches were enqueued, and a job's "
                "_job_id makes a retry safe)"
            )
            sent = await send_prepared(app, batch, what)
        return cls(spec, batch, results, sent, app.instruments.job(spec.name))

    async def abandon(self, stats: BulkStats | None, *, cancel: bool) -> None:
        """The stream failed (or, ``cancel``, is cancelled or closed) with this batch sent.

        The batch is in Redis's hands either way. Unless cancelling, its reply
        is read (so the connection is kept and ``stats`` count it); its own
        error, if any, gives way to the one already raised.
        """
        if self.sent is None:
            return
        if cancel:
            sent, self.sent = self.sent, None
            await sent.discard()
            return
        with contextlib.suppress(Exception):
            await self.finish(stats)

    async def finish(self, stats: BulkStats | None) -> list[Job | None]:
        """The batch's results in input order, once Redis has answered."""
        sent, self.sent = self.sent, None
        written = await sent.read() if sent is not None else []
        batch = self.batch
        out: list[Job | None] = []
        duplicates = not_unique = 0
        for result in self.results:
            if isinstance(result, _Pending):
                prepared = batch[result.index]
                code = written[result.index]
                if code == WRITTEN:
                    assert sent is not None  # a batch with jobs in it was sent
                    out.append(sent.job(prepared))
                else:
                    if code == NOT_UNIQUE:
                        not_unique += 1
                    else:
                        duplicates += 1
                    out.append(None)
            else:
                out.append(result)
        rejected = len(self.results) - len(batch)
        if self.meter.enabled:  # the kill switch counted its own rejections
            queues = Counter(
                job.queue for job, code in zip(batch, written, strict=True) if code == WRITTEN
            )
            for queue, count in queues.items():
                self.meter.enqueued(queue, count)
            self.meter.rejected("duplicate_id", duplicates)
            self.meter.rejected("unique", not_unique)
        if stats is not None:
            stats.written += len(batch) - duplicates - not_unique
            stats.duplicates += duplicates
            stats.rejected += rejected + not_unique
        _log.debug(
            logs.JOBS_ENQUEUED,
            job=self.spec.name,
            written=len(batch) - duplicates - not_unique,
            duplicates=duplicates,
            not_unique=not_unique,
            rejected=rejected,
        )
        return out


async def enqueue_many(
    app: Core,
    job: Any,
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    batch_size: int = 1000,
    **options: Any,
) -> list[Job | None]:
    """Enqueue one job per item; the results in input order (Job, or None if rejected)."""
    out: list[Job | None] = []
    async for results in enqueue_stream(app, job, items, batch_size=batch_size, **options):
        out += results
    return out
