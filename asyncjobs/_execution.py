"""The execution path: what runs around every job in a worker, as composed layers.

    (trace span) → outcome → timeout → lock (exclusive jobs) → server middleware
    (kill switch first) → job

The trace span is there when the App traces (:mod:`asyncjobs._tracing`).

Each layer is a middleware ``(request, call_next)`` over an
:class:`~asyncjobs.ExecutionRequest`, composed once per job with
:func:`~asyncjobs._middleware.compose`, and each can be run alone:

- :class:`Outcome` times the try and says how it ended (``job.succeeded``,
  ``job.retrying``, ``job.failed``, ``job.dead``, ``job.locked``), frees the
  job's uniqueness lock, asks :func:`decide` what a failure means, writes the
  dead letter, and turns a retry into arq's ``Retry`` for the worker loop.
- :func:`timeout_layer` enforces the job's timeout: running longer is a
  :class:`JobTimeout`, a failure like any other.
- :class:`AdvisoryLock` runs the rest holding the job's PostgreSQL advisory
  lock; when another worker holds it, :class:`Locked`.

Exceptions never escape into the worker loop except as the job's own failure
or arq's ``Retry``; a cancellation passes through untouched (the worker says
whether it was a cancel or a shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, cast

import structlog

from . import _logs as logs
from ._app import App
from ._arq import Retry, WorkerCoroutine
from ._backoff import DEFAULT_BACKOFF
from ._core import ExecutionRequest, JobContext
from ._exceptions import ConfigurationError
from ._jobs import JobSpec
from ._middleware import Handler, Middleware, compose
from ._retries import FIRST_FAILURE_KEY, retried_dead_letter
from ._uniqueness import LOCK_WAITS_PREFIX, advisory_key, lock_name, release, unique_key

_log = structlog.get_logger("asyncjobs.worker")


class JobTimeout(Exception):
    """The job ran longer than its timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the job ran longer than its timeout of {seconds:g}s")


class OutOfTries(Exception):
    """The job raised ``Retry`` on its last try."""


class SessionRequired(ConfigurationError):
    """An exclusive job's lock needs a PostgreSQL session of its own and the settings give
    none (a transaction pooler without ``ASYNCJOBS_DATABASE_LISTEN_URL``, or a listen URL
    that is itself transaction-pooled). The job is refused, not run unlocked, and not
    tried again: the next try would meet the same settings. Its dead letter keeps it."""


class Locked(Exception):
    """The job's advisory lock is held elsewhere (or no lock connection was free)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name)
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Decision:
    """What a failed try leads to: another try (``retry``) or the end, and why."""

    retry: bool
    why: str


def decide(error: BaseException, tries: int, spec: JobSpec) -> Decision:
    """Whether a job whose try number ``tries`` raised ``error`` is tried again. Pure.

    ``Retry`` (the job asked) is honoured while tries are left; any other error is
    retried while tries are left, if it is one of ``retry_on`` and none of
    ``give_up_on``. An exclusive job refused for want of a PostgreSQL session
    (:class:`SessionRequired`) is not retried: its settings will not change in this
    process.
    """
    if tries >= spec.max_tries:
        return Decision(False, "max_tries")
    if isinstance(error, SessionRequired):
        return Decision(False, "session_required")
    if isinstance(error, Retry):
        return Decision(True, "asked")
    if isinstance(error, spec.give_up_on):
        return Decision(False, "give_up_on")
    if not isinstance(error, spec.retry_on):
        return Decision(False, "not_retry_on")
    return Decision(True, "retry_on")


def job_timeout(spec: JobSpec, app: App) -> float:
    """The timeout the execution path enforces for ``spec``."""
    return spec.timeout if spec.timeout is not None else app.settings.job_timeout


def timeout_layer(seconds: float) -> Middleware[ExecutionRequest]:
    """A layer that fails the rest with :class:`JobTimeout` after ``seconds``."""

    async def timeout(request: ExecutionRequest, call_next: Handler[ExecutionRequest]) -> Any:
        try:
            async with asyncio.timeout(seconds):
                return await call_next(request)
        except TimeoutError as exc:
            raise JobTimeout(seconds) from exc

    return timeout


class AdvisoryLock:
    """A layer that runs the rest holding the job's advisory lock, on a connection of the
    App's lock pool; :class:`Locked` when it is held elsewhere or no connection is free,
    :class:`SessionRequired` when the settings give no PostgreSQL session to hold it on."""

    def __init__(self, spec: JobSpec, app: App) -> None:
        self.spec, self.app = spec, app

    async def __call__(
        self, request: ExecutionRequest, call_next: Handler[ExecutionRequest]
    ) -> Any:
        name = cast(str, lock_name(self.spec, tuple(request.args), request.kwargs))
        try:
            pool = await self.app.lock_pool()
        except ConfigurationError as exc:
            raise SessionRequired(f"job {self.spec.name!r} was not run: {exc}") from exc
        try:
            conn = await pool.acquire(timeout=min(1.0, self.spec.lock_retry))
        except TimeoutError:
            raise Locked(name, "no_lock_connection") from None
        key = advisory_key(name)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                raise Locked(name, "held")
            try:
                return await call_next(request)
            finally:
                # A broken session has dropped its locks already.
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
        finally:
            await pool.release(conn)


class Outcome:
    """The outermost layer: events, the retry decision, dead letters, uniqueness locks.

    ``dead_letters=False`` (reconcilers: their next period is their retry) logs a
    final failure without writing a dead letter.
    """

    def __init__(self, spec: JobSpec, app: App, *, dead_letters: bool = True) -> None:
        self.spec, self.app, self.dead_letters = spec, app, dead_letters
        self.exclusive = spec.lock is not None or spec.exclusive
        self.backoff = spec.backoff or DEFAULT_BACKOFF
        self.queue = spec.queue or app.settings.queue_name

    async def __call__(
        self, request: ExecutionRequest, call_next: Handler[ExecutionRequest]
    ) -> Any:
        spec, ctx = self.spec, request.ctx
        about = {"job": spec.name, "job_id": ctx.get("job_id"), "job_try": ctx.get("job_try", 1)}
        _log.debug(logs.JOB_STARTED, **about)
        if spec.unique_for is not None and spec.unique_until == "start":
            await release_unique(request, about)
        start = time.perf_counter()
        try:
            result = await call_next(request)
        except Locked as locked:
            return await self._locked(request, about, locked)
        except Exception as exc:
            await self._failed(request, about, exc, start)
        if spec.unique_for is not None and spec.unique_until == "success":
            await release_unique(request, about)  # a skipped copy frees it too: it is gone
        if request.skipped:  # the kill switch's gate logged it; nothing ran to tidy after
            return result
        await self._succeeded(request, about)
        _log.info(logs.JOB_SUCCEEDED, **about, duration_ms=_ms_since(start))
        return result

    async def _succeeded(self, request: ExecutionRequest, about: dict[str, Any]) -> None:
        """Tidy what earlier tries left: a retried dead letter's record, the notes of its
        first failure and of its waits for a lock. Best effort: the job did succeed."""
        job_id = str(about["job_id"])
        try:
            dead_id = retried_dead_letter(job_id)
            if dead_id is not None:  # a dead letter retried by an operator succeeded
                await self.app.dead.remove(dead_id)
            redis = request.ctx.get("redis")
            # Both notes are written only by a try that did not end the job: none on try 1.
            if redis is not None and int(about["job_try"]) > 1:
                await redis.delete(FIRST_FAILURE_KEY + job_id, LOCK_WAITS_PREFIX + job_id)
        except Exception as exc:
            _log.warning(logs.JOB_TIDY_FAILED, **about, error=f"{type(exc).__name__}: {exc}")

    async def _locked(
        self, request: ExecutionRequest, about: dict[str, Any], locked: Locked
    ) -> None:
        spec = self.spec
        _log.info(
            logs.JOB_LOCKED, **about, lock=locked.name, reason=locked.reason, action=spec.on_locked
        )
        if spec.on_locked == "drop":
            await release_unique(request, about)
            return None
        await _count_lock_wait(request.ctx, str(about["job_id"]))
        raise Retry(defer=spec.lock_retry * random.uniform(0.5, 1.5)) from None

    async def _failed(
        self, request: ExecutionRequest, about: dict[str, Any], exc: Exception, start: float
    ) -> NoReturn:
        """Log the failed try, then raise arq's ``Retry`` (another try) or the error (dead)."""
        ctx = request.ctx
        tries = about["job_try"] = await _tries(ctx, about, self.exclusive)
        decision = decide(exc, tries, self.spec)
        asked = isinstance(exc, Retry)
        text = "Retry requested" if asked else f"{type(exc).__name__}: {exc}"
        if decision.retry:
            if asked:
                delay = (cast(Retry, exc).defer_score or 0) / 1000
            else:
                delay = self.backoff.delay(tries)
                await _first_failure(ctx, str(about["job_id"]), pop=False)
            log = _log.info if asked else _log.warning
            log(
                logs.JOB_RETRYING,
                **about,
                duration_ms=_ms_since(start),
                delay_s=round(delay, 3),
                error=text,
            )
            if asked:
                raise exc
            raise Retry(defer=delay) from exc
        if not asked:
            _log.error(
                logs.JOB_FAILED, **about, duration_ms=_ms_since(start), error=text, exc_info=exc
            )
        await self._dead(request, about, exc)
        if asked:  # not arq's Retry: the worker must finish the job, not schedule it again
            raise OutOfTries(f"the job asked for another try after its last ({tries})") from exc
        raise exc

    async def _dead(self, request: ExecutionRequest, about: dict[str, Any], exc: Exception) -> None:
        await release_unique(request, about)  # a dead job frees its uniqueness lock
        redis = request.ctx.get("redis")
        if self.exclusive and redis is not None:
            with contextlib.suppress(Exception):
                await redis.delete(LOCK_WAITS_PREFIX + str(about["job_id"]))
        if not self.dead_letters:
            return
        spec, ctx = self.spec, request.ctx
        job_id = str(about["job_id"])
        first = await _first_failure(ctx, job_id, pop=True)
        error = f"{type(exc).__name__}: {exc}"
        try:
            dead_id: int | None = await self.app.dead.record(
                job_name=spec.name,
                job_id=job_id,
                queue=self.queue,
                args=tuple(request.args),
                kwargs=request.kwargs,
                redact=spec.redact_args,
                tries=int(about["job_try"]),
                exc=exc,
                first_failed_at=first,
            )
            _log.error(logs.JOB_DEAD, **about, dead_letter_id=dead_id, error=error)
        except Exception as store_exc:  # the store is down: say everything in the log instead
            _log.error(
                logs.JOB_DEAD,
                **about,
                dead_letter_id=None,
                error=error,
                store_error=f"{type(store_exc).__name__}: {store_exc}",
                args=None if spec.redact_args else list(request.args),
                kwargs=None if spec.redact_args else request.kwargs,
            )


def layers(spec: JobSpec, app: App, *, dead_letters: bool = True) -> list[Middleware[Any]]:
    """The layers around ``spec``'s job, outermost first, before the server middleware."""
    found: list[Middleware[Any]] = [
        Outcome(spec, app, dead_letters=dead_letters),
        timeout_layer(job_timeout(spec, app)),
    ]
    if spec.lock is not None or spec.exclusive:
        found.append(AdvisoryLock(spec, app))
    if app.tracing is not None:  # outermost: its span covers the whole try
        found.insert(0, app.tracing.execution_layer(spec, app))
    return found


async def _invoke(request: ExecutionRequest) -> Any:
    return await request.spec.invoke(request.ctx, request.args, request.kwargs)


def execution_chain(
    spec: JobSpec, app: App, *, dead_letters: bool = True
) -> Handler[ExecutionRequest]:
    """:func:`layers`, the App's server middleware, then the job, composed once: what runs
    one :class:`ExecutionRequest` (in a worker, or in :func:`asyncjobs.testing.capture`)."""
    return compose([*layers(spec, app, dead_letters=dead_letters), *app.server_middleware], _invoke)


def executor(spec: JobSpec, app: App, *, dead_letters: bool = True) -> WorkerCoroutine:
    """The coroutine the worker runs for ``spec``: its :func:`execution_chain`."""
    chain = execution_chain(spec, app, dead_letters=dead_letters)

    async def execute(ctx: JobContext, *args: Any, **kwargs: Any) -> Any:
        return await chain(ExecutionRequest(app, spec, ctx, args, kwargs))

    execute.__qualname__ = execute.__name__ = spec.name
    return cast(WorkerCoroutine, execute)


async def release_unique(request: ExecutionRequest, about: dict[str, Any]) -> None:
    """Free the job's uniqueness lock if it holds it (best effort: the TTL bounds it anyway)."""
    lock = unique_key(request.spec, tuple(request.args), request.kwargs)
    redis = request.ctx.get("redis")
    if lock is None or redis is None:
        return
    try:
        await release(redis, lock, str(about["job_id"]))
    except Exception as exc:
        _log.warning(logs.UNIQUE_RELEASE_FAILED, **about, error=f"{type(exc).__name__}: {exc}")


async def _count_lock_wait(ctx: JobContext, job_id: str) -> None:
    redis = ctx.get("redis")
    if redis is not None:
        key = LOCK_WAITS_PREFIX + job_id
        try:
            await redis.incr(key)
            await redis.expire(key, 7 * 86400)
        except Exception as exc:  # the wait then counts as a try: better than no retry
            _log.warning(logs.JOB_TIDY_FAILED, job_id=job_id, error=repr(exc))


async def _tries(ctx: JobContext, about: dict[str, Any], exclusive: bool) -> int:
    """The job's tries so far: arq's count less, for an exclusive job, its waits for the lock
    (which are not tries). Logged and recorded in place of arq's count once it failed."""
    job_try = int(about["job_try"])
    redis = ctx.get("redis")
    if not exclusive or redis is None:
        return job_try
    try:
        waits = int(await redis.get(LOCK_WAITS_PREFIX + str(about["job_id"])) or 0)
    except Exception:  # unknown: count every claim as a try
        waits = 0
    return max(1, job_try - waits)


async def _first_failure(ctx: JobContext, job_id: str, *, pop: bool) -> datetime | None:
    """Note (or, with ``pop``, read and forget) when this job first failed. Best effort."""
    key = FIRST_FAILURE_KEY + job_id
    redis = ctx.get("redis")
    if redis is None:
        return None
    try:
        if not pop:
            await redis.set(key, str(time.time()), nx=True, ex=30 * 86400)
            return None
        raw = await redis.getdel(key)
    except Exception:
        return None
    return datetime.fromtimestamp(float(raw), UTC) if raw else None


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


__all__ = [
    "AdvisoryLock",
    "Decision",
    "JobTimeout",
    "Locked",
    "OutOfTries",
    "Outcome",
    "decide",
    "execution_chain",
    "executor",
    "job_timeout",
    "layers",
    "timeout_layer",
]
