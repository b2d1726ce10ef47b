"""The execution wrapper: what runs around every job in a worker.

Server middleware (the kill switch's execution gate first), the job's timeout,
exclusive locks, retries with backoff, dead letters, uniqueness locks, and one
structured event per outcome. Exceptions never escape into arq's loop except
as the job's own failure, which arq records and survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from . import logs
from ._arq import Retry, WorkerCoroutine
from .app import App
from .jobs import JobSpec
from .middleware import ExecutionRequest, compose
from .retries import DEFAULT_BACKOFF, FIRST_FAILURE_KEY, retried_dead_letter
from .uniqueness import LOCK_WAITS_PREFIX, advisory_key, lock_name, release, unique_key

_log = structlog.get_logger("asyncjobs.worker")


class _Locked(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name)
        self.name = name
        self.reason = reason


def executor(spec: JobSpec, app: App, *, dead_letters: bool = True) -> WorkerCoroutine:
    """The coroutine arq runs for ``spec``: server middleware, retries and instrumentation.

    The job's timeout is enforced here (arq's own is set a little longer), so a
    timeout is a failure like any other and is retried. On a failure that has
    tries left, the wrapper raises arq's ``Retry`` with the backoff delay; on the
    last one (or one ``give_up_on`` names) it writes a dead letter, unless
    ``dead_letters=False`` (reconcilers: the next period is their retry).
    """
    name = spec.name
    log = _log
    timeout = job_timeout(spec, app)
    backoff = spec.backoff or DEFAULT_BACKOFF
    queue = spec.queue or app.settings.queue_name

    async def invoke(request: ExecutionRequest) -> Any:
        return await request.spec.invoke(request.ctx, request.args, request.kwargs)

    chain = compose(app.server_middleware, invoke)
    exclusive = spec.lock is not None or spec.exclusive

    async def run_exclusive(request: ExecutionRequest) -> Any:
        """Run the chain holding the job's advisory lock, on a connection of the lock pool."""
        name_ = cast(str, lock_name(spec, tuple(request.args), request.kwargs))
        pool = await app.lock_pool()
        try:
            conn = await pool.acquire(timeout=min(1.0, spec.lock_retry))
        except TimeoutError:
            raise _Locked(name_, "no_lock_connection") from None
        key = advisory_key(name_)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                raise _Locked(name_, "held")
            try:
                return await chain(request)
            finally:
                # A broken session has dropped its locks already.
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
        finally:
            await pool.release(conn)

    run = run_exclusive if exclusive else chain

    async def dead(
        ctx: dict[str, Any], about: dict[str, Any], args: Any, kwargs: Any, exc: BaseException
    ) -> None:
        await release_unique(ctx, spec, args, kwargs, about)  # a dead job frees its lock
        if not dead_letters:
            return
        job_id = str(about["job_id"])
        first = await _first_failure(ctx, job_id, pop=True)
        try:
            dead_id: int | None = await app.dead.record(
                job_name=name,
                job_id=job_id,
                queue=queue,
                args=tuple(args),
                kwargs=kwargs,
                redact=spec.redact_args,
                tries=int(about["job_try"]),
                exc=exc,
                first_failed_at=first,
            )
            log.error(
                logs.JOB_DEAD, **about, dead_letter_id=dead_id, error=f"{type(exc).__name__}: {exc}"
            )
        except Exception as store_exc:  # the store is down: say everything in the log instead
            log.error(
                logs.JOB_DEAD,
                **about,
                dead_letter_id=None,
                error=f"{type(exc).__name__}: {exc}",
                store_error=f"{type(store_exc).__name__}: {store_exc}",
                args=None if spec.redact_args else list(args),
                kwargs=None if spec.redact_args else kwargs,
            )

    async def execute(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        job_try = ctx.get("job_try", 1)
        about = {"job": name, "job_id": ctx.get("job_id"), "job_try": job_try}
        log.debug(logs.JOB_STARTED, **about)
        if spec.unique_for is not None and spec.unique_until == "start":
            await release_unique(ctx, spec, args, kwargs, about)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                result = await run(ExecutionRequest(app, spec, ctx, args, kwargs))
        except asyncio.CancelledError:  # a cancel or a shutdown: the worker says which
            raise
        except _Locked as locked:
            log.info(
                logs.JOB_LOCKED,
                **about,
                lock=locked.name,
                reason=locked.reason,
                action=spec.on_locked,
            )
            if spec.on_locked == "drop":
                await release_unique(ctx, spec, args, kwargs, about)
                return None
            await _count_lock_wait(ctx, str(about["job_id"]))
            raise Retry(defer=spec.lock_retry * random.uniform(0.5, 1.5)) from None
        except Retry as exc:  # the job asked to be retried
            job_try = about["job_try"] = await _tries(ctx, about, exclusive)
            if job_try >= spec.max_tries:
                await dead(ctx, about, args, kwargs, exc)
                raise
            log.info(
                logs.JOB_RETRYING,
                **about,
                duration_ms=_ms_since(start),
                delay_s=(exc.defer_score or 0) / 1000,
                error="Retry requested",
            )
            raise
        except Exception as exc:
            error = exc if not isinstance(exc, TimeoutError) else JobTimeout(timeout)
            text = f"{type(error).__name__}: {error}"
            job_try = about["job_try"] = await _tries(ctx, about, exclusive)
            retry = (
                job_try < spec.max_tries
                and isinstance(error, spec.retry_on)
                and not isinstance(error, spec.give_up_on)
            )
            if retry:
                delay = backoff.delay(job_try)
                await _first_failure(ctx, str(about["job_id"]), pop=False)
                log.warning(
                    logs.JOB_RETRYING,
                    **about,
                    duration_ms=_ms_since(start),
                    delay_s=round(delay, 3),
                    error=text,
                )
                raise Retry(defer=delay) from exc
            log.error(
                logs.JOB_FAILED, **about, duration_ms=_ms_since(start), error=text, exc_info=exc
            )
            await dead(ctx, about, args, kwargs, error)
            raise
        if spec.unique_for is not None and spec.unique_until == "success":
            await release_unique(ctx, spec, args, kwargs, about)
        dead_id = retried_dead_letter(about["job_id"])
        if dead_id is not None:  # a dead letter retried by an operator succeeded
            await app.dead.remove(dead_id)
        log.info(logs.JOB_SUCCEEDED, **about, duration_ms=_ms_since(start))
        return result

    execute.__qualname__ = execute.__name__ = name
    return cast(WorkerCoroutine, execute)


class JobTimeout(Exception):
    """The job ran longer than its timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the job ran longer than its timeout of {seconds:g}s")


def job_timeout(spec: JobSpec, app: App) -> float:
    """The timeout the execution wrapper enforces for ``spec``."""
    return spec.timeout if spec.timeout is not None else app.settings.job_timeout


async def release_unique(
    ctx: dict[str, Any], spec: JobSpec, args: Any, kwargs: dict[str, Any], about: dict[str, Any]
) -> None:
    """Free the job's uniqueness lock if it holds it (best effort: the TTL bounds it anyway)."""
    lock = unique_key(spec, tuple(args), kwargs)
    redis = ctx.get("redis")
    if lock is None or redis is None:
        return
    try:
        await release(redis, lock, str(about["job_id"]))
    except Exception as exc:
        _log.warning(logs.UNIQUE_RELEASE_FAILED, **about, error=f"{type(exc).__name__}: {exc}")


async def _count_lock_wait(ctx: dict[str, Any], job_id: str) -> None:
    redis = ctx.get("redis")
    if redis is not None:
        key = LOCK_WAITS_PREFIX + job_id
        await redis.incr(key)
        await redis.expire(key, 7 * 86400)


async def _tries(ctx: dict[str, Any], about: dict[str, Any], exclusive: bool) -> int:
    """The job's tries so far: arq's count less, for an exclusive job, its waits for the lock
    (which are not tries). Logged and recorded in place of arq's count once it failed."""
    job_try = int(about["job_try"])
    redis = ctx.get("redis")
    if not exclusive or redis is None:
        return job_try
    return job_try - int(await redis.get(LOCK_WAITS_PREFIX + str(about["job_id"])) or 0)


async def _first_failure(ctx: dict[str, Any], job_id: str, *, pop: bool) -> datetime | None:
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
