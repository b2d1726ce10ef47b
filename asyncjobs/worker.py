"""``arq asyncjobs.WorkerSettings``: an arq worker built from the registry.

arq reads a settings class through ``settings_cls.__dict__``, which holds only
the class's own attributes and is read when the worker starts. WorkerSettings'
metaclass answers that lookup with the merged attributes of the class and its
bases plus what the environment says at that moment: the jobs registered by
the modules in ``ASYNCJOBS_IMPORTS``, the Redis settings, the JSON serializer
and the pool hooks. So ``arq asyncjobs.WorkerSettings`` works as it is, and a
subclass can override any arq option (``max_jobs = 50``) or add
``on_startup``/``on_shutdown`` hooks, which run after/before asyncjobs' own.

Every job runs inside the execution wrapper: the App's server-middleware
chain, with ``job.started`` / ``job.succeeded`` / ``job.failed`` events.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import structlog
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Function, Retry, func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import logs
from .app import App, get_app
from .exceptions import ConfigurationError
from .jobs import JobSpec
from .middleware import ExecutionRequest, compose
from .retries import DEFAULT_BACKOFF, FIRST_FAILURE_KEY, retried_dead_letter
from .serializer import serialize, worker_deserializer
from .settings import HOW_TO_CONFIGURE, Settings, redact
from .uniqueness import release, unique_key

_log = structlog.get_logger("asyncjobs.worker")

Hook = Callable[[dict[str, Any]], Awaitable[Any]]


class ReconnectingRetry(RedisRetry):
    """redis-py retry policy for the worker's connections.

    Fails fast until the first command succeeds (so a worker pointed at nothing
    exits at once with a clear error), then retries connection errors forever
    with capped exponential backoff, so the worker rides out a Redis restart and
    resumes by itself. It stops retrying once the worker's main task has ended,
    so shutting down during an outage does not hang. One instance is shared by
    every connection of the pool (redis-py deep-copies retry objects).
    """

    def __init__(self) -> None:
        super().__init__(
            ExponentialBackoff(cap=1.0, base=0.05),
            -1,
            (RedisConnectionError, RedisTimeoutError),
        )
        # Also the OS-level errors a dropped socket raises before redis-py wraps them.
        self._retry_on = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
        self.connected = False
        self.outage_since: float | None = None
        self.main_task: asyncio.Task[Any] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> ReconnectingRetry:
        return self

    async def call_with_retry(self, do: Callable[[], Awaitable[Any]], fail: Any) -> Any:
        failures = 0
        while True:
            try:
                result = await do()
            except self._retry_on as error:
                await fail(error)
                stopping = self.main_task is not None and self.main_task.done()
                if not self.connected or stopping:
                    raise
                failures += 1
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    _log.warning(logs.REDIS_UNAVAILABLE, error=str(error), retrying=True)
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            self.connected = True
            if self.outage_since is not None:
                down_for = time.monotonic() - self.outage_since
                self.outage_since = None
                _log.info(logs.REDIS_RECONNECTED, down_s=round(down_for, 3))
            return result


def quiet_arq_job_lines() -> None:
    """Raise arq's worker logger to WARNING: asyncjobs' events replace its INFO lines.

    arq writes two INFO lines per job (start and end); building those records
    alone costs a worker about 6 % of its throughput, and ``job.succeeded`` /
    ``job.failed`` say the same with structure. arq's warnings and errors still
    pass; with ``ASYNCJOBS_LOG_LEVEL=debug`` nothing is changed.
    """
    logging.getLogger("arq.worker").setLevel(logging.WARNING)


def redis_settings(settings: Settings, retry: RedisRetry | None = None) -> RedisSettings:
    """arq's RedisSettings for ``settings.redis_url``, failing fast at startup."""
    rs = RedisSettings.from_dsn(settings.require_redis_url())
    rs.conn_timeout = max(1, round(settings.redis_timeout))
    rs.conn_retries = 0
    rs.retry = retry
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    return rs


def _probe(url: str, timeout: float) -> None:
    """Fail at once, with advice, when nothing listens at a TCP Redis URL."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return
    host, port = parts.hostname or "localhost", parts.port or 6379
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigurationError(
            f"nothing is listening at ASYNCJOBS_REDIS_URL={redact(url)} ({exc}). "
            f"Start Redis there. {HOW_TO_CONFIGURE}"
        ) from exc


def import_job_modules(modules: tuple[str, ...]) -> None:
    """Import each module named in ``ASYNCJOBS_IMPORTS`` so its ``@job``s register."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"ASYNCJOBS_IMPORTS names {name!r}, which cannot be imported: {exc}. "
                "Check the module path and that it is on sys.path (the current directory is)."
            ) from exc


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
                result = await chain(ExecutionRequest(app, spec, ctx, args, kwargs))
        except asyncio.CancelledError:  # shutdown or abort, not a failure of the job
            log.warning(logs.JOB_CANCELLED, **about, duration_ms=_ms_since(start))
            raise
        except Retry as exc:  # the job asked to be retried
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


def _functions(app: App) -> list[Function]:
    scheduled = {rec.name for rec in app.reconcilers}
    return [
        func(
            executor(spec, app),
            name=spec.name,
            # The wrapper enforces the job's timeout; arq's is a backstop one second behind.
            timeout=job_timeout(spec, app) + 1,
            keep_result=spec.keep_result,
            max_tries=spec.max_tries,
        )
        for spec in app.registry
        if spec.name not in scheduled
    ]


def _cron_jobs(app: App) -> list[CronJob]:
    """One arq cron job per reconciler, running through the execution wrapper."""
    return [
        rec.cron_job(executor(rec.spec, app, dead_letters=False), job_timeout(rec.spec, app) + 1)
        for rec in app.reconcilers
    ]


def _hooks(
    app: App, retry: ReconnectingRetry, user_startup: Hook | None, user_shutdown: Hook | None
) -> tuple[Hook, Hook]:
    async def on_startup(ctx: dict[str, Any]) -> None:
        retry.main_task = asyncio.current_task()
        ctx["asyncjobs"] = app
        _log.info(
            logs.WORKER_STARTED,
            jobs=sorted(app.registry.names()),
            queue=app.settings.queue_name,
            max_jobs=app.settings.max_jobs,
        )
        if user_startup is not None:
            await user_startup(ctx)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        # arq awaits this in close(); an exception here would skip closing its pool.
        try:
            if user_shutdown is not None:
                await user_shutdown(ctx)
        except Exception as exc:
            _log.error(logs.HOOK_FAILED, hook="on_shutdown", error=repr(exc), exc_info=exc)
        try:
            await app.close()
        except Exception as exc:
            _log.error(logs.HOOK_FAILED, hook="app.close", error=repr(exc), exc_info=exc)
        _log.info(logs.WORKER_STOPPED)

    return on_startup, on_shutdown


def resolve_worker_options(own: dict[str, Any]) -> dict[str, Any]:
    """arq Worker keyword arguments: asyncjobs' defaults from the environment, then ``own``."""
    settings = Settings.from_env()
    logs.configure_logging(settings.log_format, settings.log_level)
    if settings.log_level != "debug":
        quiet_arq_job_lines()
    try:
        url = settings.require_redis_url()
        import_job_modules(settings.imports)
        app = get_app()
        if not len(app.registry):
            raise ConfigurationError(
                "no jobs are registered: set ASYNCJOBS_IMPORTS to the module(s) that define "
                "your @job functions, e.g. ASYNCJOBS_IMPORTS=myapp.jobs"
            )
        _probe(url, settings.redis_timeout)
    except ConfigurationError as exc:
        _log.error(logs.WORKER_MISCONFIGURED, error=str(exc))
        raise
    cfg = app.settings
    retry = ReconnectingRetry()
    on_startup, on_shutdown = _hooks(
        app, retry, own.pop("on_startup", None), own.pop("on_shutdown", None)
    )
    options: dict[str, Any] = {
        "functions": _functions(app),
        "cron_jobs": _cron_jobs(app),
        "queue_name": cfg.queue_name,
        "redis_settings": redis_settings(cfg, retry),
        "job_serializer": serialize,
        "job_deserializer": worker_deserializer(app.registry.names()),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": cfg.max_jobs,
        "poll_delay": cfg.poll_delay,
        "job_timeout": cfg.job_timeout,
        "keep_result": cfg.keep_result,
        # Each poll reads what fits; arq's default (max_jobs * 5) rereads ids it cannot start.
        "queue_read_limit": cfg.max_jobs,
        # arq writes a line per job start and end; asyncjobs' events replace them.
        "log_results": False,
    }
    options.update(own)
    return options


class _WorkerSettingsMeta(type):
    @property  # type: ignore[misc]  # arq reads settings_cls.__dict__; see module docstring
    def __dict__(cls) -> dict[str, Any]:  # type: ignore[override]
        # See the module docstring: arq reads this mapping to build its Worker.
        own: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            real = type.__dict__["__dict__"].__get__(klass)
            own.update({k: v for k, v in real.items() if not k.startswith("_")})
        return resolve_worker_options(own)


class WorkerSettings(metaclass=_WorkerSettingsMeta):
    """Run a worker with ``arq asyncjobs.WorkerSettings``.

    Configured by ``ASYNCJOBS_*`` variables (``asyncjobs --help`` lists them);
    jobs come from the modules in ``ASYNCJOBS_IMPORTS``. Subclass it to set any
    of arq's Worker options, which win over the environment::

        class Settings(asyncjobs.WorkerSettings):
            max_jobs = 50
            async def on_startup(ctx): ...
    """
