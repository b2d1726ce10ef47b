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
from typing import Any
from urllib.parse import urlsplit

import structlog
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import logs
from .app import App, get_app
from .exceptions import ConfigurationError
from .execution import executor, job_timeout
from .serializer import serialize, worker_deserializer
from .settings import HOW_TO_CONFIGURE, Settings, redact

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


def _functions(app: App) -> list[Function]:
    scheduled = {rec.name for rec in app.reconcilers}
    return [
        func(
            executor(spec, app),
            name=spec.name,
            # The wrapper enforces the job's timeout; arq's is a backstop one second behind.
            timeout=job_timeout(spec, app) + 1,
            keep_result=spec.keep_result,
            # Waits for an advisory lock re-defer through arq without being tries, so
            # arq must not stop an exclusive job; the wrapper counts its real tries.
            max_tries=spec.max_tries if spec.lock is None and not spec.exclusive else 1_000_000,
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
