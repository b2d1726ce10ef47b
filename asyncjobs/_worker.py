"""``arq asyncjobs.WorkerSettings``: arq's command, running asyncjobs' worker loop.

arq's command builds arq's ``Worker`` from what ``settings_cls.__dict__`` holds
(only a class's own attributes, read when the worker starts). WorkerSettings'
metaclass answers that lookup with the merged attributes of the class and its
bases plus what the environment says at that moment: the jobs registered by
the modules in ``ASYNCJOBS_IMPORTS``, the Redis settings, the JSON serializer.
Its ``on_startup`` is :func:`_bridge`: arq's ``Worker`` connects, then hands
the process to asyncjobs' own loop (:class:`asyncjobs.runner.Worker`, which
says why it is not an arq subclass) for the worker's whole life. A subclass
can set the options the loop reads (``max_jobs = 50``, ``queues``, ...) and
``on_startup``/``on_shutdown`` hooks, which get the worker's context.

Every job runs inside the execution wrapper (:mod:`asyncjobs._execution`): the
App's server-middleware chain, with ``job.started`` / ``job.succeeded`` /
``job.failed`` events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import structlog

from . import _logs as logs
from ._app import App, get_app
from ._arq import (
    EnvRedisSettings,
    Function,
    ReconnectingRetry,
    RedisSettings,
    func,
    probe_sentinels,
    redis_settings,
    worker_redis,
)
from ._exceptions import ConfigurationError
from ._metrics_server import MetricsServer, open_server
from ._settings import HOW_TO_CONFIGURE, Settings, redact
from .runner import Worker
from .serializer import deserialize, serialize

_log = structlog.get_logger("asyncjobs.worker")


def _probe(settings: Settings) -> None:
    """Fail at once, with advice, when nothing listens at a TCP Redis URL, or when no
    Sentinel of a Sentinel URL names a master that is up and listening."""
    url, timeout = settings.require_redis_url(), settings.redis_timeout
    sentinel = settings.redis_sentinel
    if sentinel is not None:
        host, port = probe_sentinels(sentinel, timeout)  # a ConfigurationError says what
        where = f"{host}:{port}, the master the Sentinels in ASYNCJOBS_REDIS_URL name,"
        fix = "Check that master, or wait for the Sentinels to fail over."
    else:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return
        host, port = parts.hostname or "localhost", parts.port or 6379
        where = f"ASYNCJOBS_REDIS_URL={redact(url)}"
        fix = f"Start Redis there. {HOW_TO_CONFIGURE}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigurationError(f"nothing is listening at {where} ({exc}). {fix}") from exc


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


async def _never_called(ctx: dict[str, Any]) -> None:  # pragma: no cover
    raise RuntimeError("arq's own loop does not run asyncjobs' jobs")


_PLACEHOLDER = func(_never_called, name="asyncjobs")
"""What arq's ``Worker`` is given as its functions (it wants at least one): asyncjobs'
loop runs the jobs."""

_LOOP_OPTIONS = ("max_jobs", "poll_delay", "queues", "heartbeat", "shutdown_grace")
_SETTINGS_OPTIONS = ("queue_name", "job_timeout", "keep_result")


@dataclass(slots=True)
class _Preflight:
    app: App
    retry: ReconnectingRetry
    redis: RedisSettings
    metrics: MetricsServer | None = None


_preflight: _Preflight | None = None


def preflight() -> _Preflight:
    """Configure this worker process from the environment, once: logging (every log
    line through structlog), the job modules, the default App; check that Redis
    answers. A misconfiguration is logged (``worker.misconfigured``) and raised, marked
    so that the process exits with status 1 and no traceback (one at debug level)."""
    global _preflight
    if _preflight is not None:
        return _preflight
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        logs.configure_logging()
        logs.route_stdlib_logging()
        _log.error(logs.WORKER_MISCONFIGURED, error=str(exc))
        raise logs.already_logged(exc) from None
    logs.configure_logging(settings.log_format, settings.log_level)
    logs.route_stdlib_logging(settings.log_level)
    try:
        settings.require_redis_url()
        import_job_modules(settings.imports)
        app = get_app()
        if not len(app.registry):
            raise ConfigurationError(
                "no jobs are registered: set ASYNCJOBS_IMPORTS to the module(s) that define "
                "your @job functions, e.g. ASYNCJOBS_IMPORTS=myapp.jobs"
            )
        _probe(settings)
        # Served from now on (/readyz says the worker waits for Redis); a port in use or a
        # missing prometheus-client is one line here, not a traceback from the loop.
        metrics = open_server(app) if app.settings.metrics_port is not None else None
    except ConfigurationError as exc:
        _log.error(logs.WORKER_MISCONFIGURED, error=str(exc))
        raise logs.already_logged(exc) from None
    retry = ReconnectingRetry()
    _preflight = _Preflight(app, retry, redis_settings(app.settings, retry), metrics)
    return _preflight


def _bridge(cls: type) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """arq's ``on_startup`` for ``cls``: run asyncjobs' loop (:class:`asyncjobs.runner.Worker`)
    for the worker's whole life, then end arq's main task so its own loop never polls."""

    async def run_asyncjobs_worker(ctx: dict[str, Any]) -> None:
        ready = preflight()
        app = ready.app
        overrides = {
            name: getattr(cls, name)
            for name in _SETTINGS_OPTIONS
            if getattr(cls, name, None) is not None
        }
        if overrides:
            app.settings = dataclasses.replace(app.settings, **overrides)
        options = {k: getattr(cls, k) for k in _LOOP_OPTIONS if getattr(cls, k, None) is not None}
        redis = arq_redis = ctx["redis"]
        if app.settings.redis_sentinel is not None:
            # arq's Sentinel client (ctx["redis"]) has no retry: the loop and the jobs get
            # one that rides out a failover. arq closes its own when the worker ends.
            redis = ctx["redis"] = await worker_redis(app.settings, ready.retry)
        freeze_startup_objects()
        worker = Worker(
            app,
            redis=redis,
            retry=ready.retry,
            ctx=ctx,
            on_startup=getattr(cls, "user_on_startup", None),
            on_shutdown=getattr(cls, "user_on_shutdown", None),
            extra_cron=list(getattr(cls, "cron_jobs", None) or ()),
            metrics=ready.metrics,
            **options,
        )
        try:
            await worker.run()
        finally:
            if redis is not arq_redis:
                await redis.aclose(close_connection_pool=True)
            try:
                await app.close()
            except Exception as exc:
                _log.error(logs.HOOK_FAILED, hook="app.close", error=repr(exc), exc_info=exc)
        # arq's Worker.run() takes a cancelled main task for a normal stop, then closes.
        raise asyncio.CancelledError

    return run_asyncjobs_worker


class WorkerSettings:
    """Run a worker with ``arq asyncjobs.WorkerSettings``.

    Configured by ``ASYNCJOBS_*`` variables (``asyncjobs --help`` lists them);
    jobs come from the modules in ``ASYNCJOBS_IMPORTS``. A subclass may set
    ``max_jobs``, ``poll_delay``, ``queues``, ``heartbeat``, ``shutdown_grace``,
    ``job_timeout``, ``keep_result``, ``queue_name``, extra arq ``cron_jobs``, and
    ``on_startup``/``on_shutdown`` hooks (they get the worker's context), which win
    over the environment::

        class Settings(asyncjobs.WorkerSettings):
            max_jobs = 50
            async def on_startup(ctx): ...

    How arq reads this class: its command builds arq's ``Worker`` from the class's
    *own* attributes (``cls.__dict__``), so :meth:`__init_subclass__` gives every
    subclass the attributes below that arq needs, and moves a subclass's own hooks
    aside (``user_on_startup``) so that ``on_startup`` stays the hand-over to
    asyncjobs' loop. Nothing here reads the environment until a worker starts:
    ``redis_settings`` resolves ``ASYNCJOBS_REDIS_URL`` (and the checks of
    :func:`preflight`) when arq first reads one of its fields.
    """

    functions: ClassVar[list[Function]] = [_PLACEHOLDER]
    redis_settings: ClassVar[RedisSettings] = EnvRedisSettings(lambda: preflight().redis)
    job_serializer = staticmethod(serialize)
    job_deserializer = staticmethod(deserialize)
    # asyncjobs' loop installs its own signal handlers over arq's (which must exist, or
    # arq's close() would log a shutdown line of its own).
    handle_signals = True
    on_startup: ClassVar[Callable[[dict[str, Any]], Awaitable[None]]]
    user_on_startup: ClassVar[Callable[[dict[str, Any]], Awaitable[Any]] | None] = None
    user_on_shutdown: ClassVar[Callable[[dict[str, Any]], Awaitable[Any]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        for hook in ("on_startup", "on_shutdown"):
            if hook in own:
                value = own[hook]
                setattr(cls, "user_" + hook, getattr(value, "__func__", value))
        if "on_shutdown" in own:
            delattr(cls, "on_shutdown")
        for name in ("functions", "redis_settings", "handle_signals"):
            if name not in own:
                setattr(cls, name, getattr(cls, name))
        for name in ("job_serializer", "job_deserializer"):
            if name not in own:
                setattr(cls, name, staticmethod(getattr(cls, name)))
        cls.on_startup = staticmethod(_bridge(cls))


WorkerSettings.on_startup = staticmethod(_bridge(WorkerSettings))


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive now (modules, functions, the App, the
    job registry: what lives as long as the process) out of the cyclic garbage
    collector's sight (:func:`gc.freeze`).

    What was chosen: the collector otherwise walks all of them again at each of its full
    collections while jobs run, and those grow with what jobs allocate (a traced job's
    spans, say). Measured on the 2-core development machine, a drain of 20,000 no-op jobs
    with every span recorded took 16 % less time (medians of 5), and the same without
    tracing no more. Objects that die later are still freed by their reference counts;
    only cycles among them are never collected, and they were alive at start. Nothing is
    done when something is frozen already (the application's own ``gc.freeze()``).

    Only a worker process does this (``arq asyncjobs.WorkerSettings``, just before its
    loop starts), not an in-process ``Worker(app).run()``: in a test process, frozen
    objects are invisible to ``gc.get_referrers``, which some libraries' checks rely on
    (Hypothesis's ``register_random`` then warns about modules imported later).
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
