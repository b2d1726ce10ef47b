"""What a worker runs, and how each run ends, as the records its finish script writes.

:func:`runnables` turns an App's registry (scheduled jobs too) and reconcilers into the
jobs a worker can run (each through the execution path, with arq's limits);
:func:`decode_payload` reads a claimed payload (JSON only, checked for arq's shape);
:class:`JobEnd` and :class:`Record` turn an outcome into a
:data:`~asyncjobs._claim.FINISH_LUA` record, with arq's result record when the result is kept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._app import App
from ._arq import CronJob, result_record, timestamp_ms
from ._claim import Claimed
from ._core import JobContext
from ._enqueue import TRACE_CONTEXT_KEY
from ._execution import executor, job_timeout
from ._jobs import JobSpec
from ._schedule import ScheduledRun

CRON_KEEP_IN_PROGRESS_MS = 60_000
"""arq keeps a finished cron job's in-progress key this long, so no worker runs it twice."""
CANCELLED_RESULT_MS = 60_000
"""A cancelled job's result is kept at least this long, for arq's ``job.abort()``."""


@dataclass(frozen=True, slots=True)
class Runnable:
    """A job this worker can run: its name, the coroutine that runs it, and arq's limits."""

    name: str
    run: Callable[..., Awaitable[Any]]
    spec: JobSpec | None = None
    max_tries: int | None = None
    keep_result_ms: int = 0
    keep_in_progress_ms: int = 0
    cron: CronJob | ScheduledRun | None = None
    timeout_s: float = 0.0


def runnables(app: App, extra_cron: Sequence[CronJob] = ()) -> dict[str, Runnable]:
    """Every job of ``app``'s registry (through the execution wrapper), its scheduled jobs
    and reconcilers (on the cron loop, through the same wrapper, without dead letters: their
    next period is their retry) and ``extra_cron`` (arq cron jobs of a settings subclass, run
    bare)."""
    settings = app.settings
    reconciled = {rec.name for rec in app.reconcilers}
    found: dict[str, Runnable] = {}

    def keep(seconds: float | None) -> int:
        value = settings.keep_result if seconds is None else seconds
        return round(value * 1000)

    def on_schedule(
        spec: JobSpec, cron: CronJob | ScheduledRun, run: Callable[..., Awaitable[Any]]
    ) -> Runnable:
        timeout = job_timeout(spec, app)
        return Runnable(
            cron.name,
            run,
            spec,
            timeout_s=timeout,
            max_tries=None,  # the wrapper counts the tries against the job's max_tries
            keep_result_ms=keep(cron.keep_result_s),
            keep_in_progress_ms=CRON_KEEP_IN_PROGRESS_MS,
            cron=cron,
        )

    for spec in app.registry:
        if spec.name in reconciled:
            continue
        if spec.schedule is not None:
            # A run's result is kept for two periods at least, so that another worker's
            # write of the same run (same job id) is refused, as for reconcilers.
            period = spec.schedule.period_hint()
            kept = max(60.0, 2 * period, spec.keep_result or 0.0)
            run = ScheduledRun(spec.name, spec.schedule, spec.queue, keep_result_s=kept)
            found[spec.name] = on_schedule(spec, run, executor(spec, app, dead_letters=False))
            continue
        exclusive = spec.lock is not None or spec.exclusive
        found[spec.name] = Runnable(
            spec.name,
            executor(spec, app),
            spec,
            timeout_s=job_timeout(spec, app),
            # An exclusive job's waits for its lock count in arq's counter; the wrapper
            # counts its real tries.
            max_tries=None if exclusive else spec.max_tries,
            keep_result_ms=keep(spec.keep_result),
        )
    for rec in app.reconcilers:
        cron = rec.cron_job(executor(rec.spec, app, dead_letters=False), job_timeout(rec.spec, app))
        found[cron.name] = on_schedule(rec.spec, cron, cron.coroutine)
    for cron in extra_cron:
        seconds = cron.timeout_s or settings.job_timeout
        found[cron.name] = Runnable(
            cron.name,
            _bounded(cron.coroutine, seconds),  # as arq's worker: its timeout applies
            None,
            timeout_s=seconds,
            max_tries=cron.max_tries,
            keep_result_ms=keep(cron.keep_result_s),
            keep_in_progress_ms=CRON_KEEP_IN_PROGRESS_MS,
            cron=cron,
        )
    return found


def _bounded(
    coroutine: Callable[..., Awaitable[Any]], seconds: float
) -> Callable[..., Awaitable[Any]]:
    async def run(ctx: JobContext, *args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(seconds):
            return await coroutine(ctx, *args, **kwargs)

    return run


def default_queues(app: App) -> tuple[str, ...]:
    """``ASYNCJOBS_QUEUES`` if set, else the default queue and every queue a job names."""
    settings = app.settings
    if settings.queues:
        return settings.queues
    named = sorted({spec.queue for spec in app.registry if spec.queue})
    return tuple(dict.fromkeys((settings.queue_name, *named)))


class Record:
    """One outcome waiting to be written back: the arguments of FINISH_LUA for a job."""

    __slots__ = ("args",)

    def __init__(self, op: str, job: Claimed, n1: int = 0, n2: int = 0, result: bytes = b""):
        self.args = (op, job.job_id, job.queue, n1, n2, result)


class JobEnd:
    """How a claimed job ended, as its FINISH_LUA record (with arq's result record)."""

    __slots__ = ("args", "enqueue_ms", "function", "job", "job_try", "kwargs", "name", "start")

    def __init__(
        self,
        job: Claimed,
        function: Runnable,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        job_try: int,
        enqueue_ms: int,
    ) -> None:
        self.job, self.function, self.name = job, function, name
        self.args, self.kwargs, self.job_try, self.enqueue_ms = args, kwargs, job_try, enqueue_ms
        self.start = timestamp_ms()

    def finished(self, success: bool, result: Any, keep_ms: int | None = None) -> Record:
        keep = self.function.keep_result_ms if keep_ms is None else keep_ms
        data = b""
        if keep:
            data = result_record(
                job_id=self.job.job_id,
                function=self.name,
                args=self.args,
                kwargs=self.kwargs,
                job_try=self.job_try,
                enqueue_ms=self.enqueue_ms,
                success=success,
                result=result,
                start_ms=self.start,
                queue=self.job.queue,
            )
        return Record("F", self.job, keep, self.function.keep_in_progress_ms, data)

    def cancelled(self) -> Record:
        """Finished, neither retried nor dead; its CancelledError result is kept at least a
        minute, so arq's ``job.abort()`` sees that the job stopped."""
        keep = self.function.keep_result_ms
        keep = -1 if keep < 0 else max(keep, CANCELLED_RESULT_MS)
        return self.finished(False, asyncio.CancelledError("cancelled"), keep)


def decode_payload(
    raw: bytes,
) -> tuple[str, list[Any], dict[str, Any], int | None, int, object] | str:
    """(name, args, kwargs, enqueued try, enqueue time ms, trace context) of arq's JSON
    payload, or a string saying what is wrong with it. Only JSON is read; nothing else is
    executed. The trace context (None if absent) is not checked here: one that cannot be
    read never stops the job (see :mod:`asyncjobs._tracing`)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return f"not a JSON job payload ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(data, dict):
        return f"payload is a JSON {type(data).__name__}, not an object"
    name, args, kwargs = data.get("f"), data.get("a", []), data.get("k", {})
    enqueue_try, enqueue_ms = data.get("t"), data.get("et", 0)
    if not isinstance(name, str) or not name:
        return "payload names no job (its 'f' is not a string)"
    if not isinstance(args, list):
        return f"payload's arguments ('a') are a {type(args).__name__}, not a list"
    if not isinstance(kwargs, dict):
        return f"payload's keyword arguments ('k') are a {type(kwargs).__name__}, not an object"
    if enqueue_try is not None and (not isinstance(enqueue_try, int) or enqueue_try < 0):
        return f"payload's try ('t') is {enqueue_try!r}, not a whole number"
    if not isinstance(enqueue_ms, int) or isinstance(enqueue_ms, bool):
        return f"payload's enqueue time ('et') is {enqueue_ms!r}, not milliseconds"
    return name, args, kwargs, enqueue_try, enqueue_ms, data.get(TRACE_CONTEXT_KEY)
