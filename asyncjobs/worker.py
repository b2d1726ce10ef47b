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

Every job runs inside the execution wrapper (:mod:`asyncjobs.execution`): the
App's server-middleware chain, with ``job.started`` / ``job.succeeded`` /
``job.failed`` events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from arq.worker import Function, func

from . import logs
from ._arq import ReconnectingRetry, redis_settings
from .app import App, get_app
from .exceptions import ConfigurationError
from .runner import Worker
from .serializer import deserialize, serialize
from .settings import HOW_TO_CONFIGURE, Settings, redact

_log = structlog.get_logger("asyncjobs.worker")


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


def _placeholder_functions(app: App) -> list[Function]:
    """What arq's ``Worker`` is given as functions: it needs at least one and lists them
    at start; the jobs themselves run in asyncjobs' loop (:mod:`asyncjobs.runner`)."""

    async def never_called(ctx: dict[str, Any]) -> None:  # pragma: no cover
        raise RuntimeError("arq's own loop does not run asyncjobs' jobs")

    names = sorted(app.registry.names() | {rec.name for rec in app.reconcilers})
    return [func(never_called, name=name) for name in names]


_WORKER_OPTIONS = ("max_jobs", "poll_delay", "queues", "heartbeat", "shutdown_grace")
_SETTINGS_OPTIONS = {"queue_name": "queue_name", "job_timeout": "job_timeout"}


def _bridge(
    app: App, retry: ReconnectingRetry, own: dict[str, Any]
) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """arq's ``on_startup``: run asyncjobs' loop (:class:`asyncjobs.runner.Worker`) for
    the worker's whole life, then end arq's main task so its own loop never polls."""
    on_startup = own.pop("on_startup", None)
    on_shutdown = own.pop("on_shutdown", None)
    extra_cron = list(own.pop("cron_jobs", None) or ())
    options = {k: own[k] for k in _WORKER_OPTIONS if own.get(k) is not None}

    async def run_asyncjobs_worker(ctx: dict[str, Any]) -> None:
        worker = Worker(
            app,
            redis=ctx["redis"],
            retry=retry,
            ctx=ctx,
            on_startup=on_startup,
            on_shutdown=on_shutdown,
            extra_cron=extra_cron,
            **options,
        )
        try:
            await worker.run()
        finally:
            try:
                await app.close()
            except Exception as exc:
                _log.error(logs.HOOK_FAILED, hook="app.close", error=repr(exc), exc_info=exc)
        # arq's Worker.run() takes a cancelled main task for a normal stop, then closes.
        raise asyncio.CancelledError

    return run_asyncjobs_worker


def resolve_worker_options(own: dict[str, Any]) -> dict[str, Any]:
    """arq Worker keyword arguments that run asyncjobs' loop, configured from the
    environment and then ``own`` (a settings subclass's attributes).

    A misconfiguration is logged (``worker.misconfigured``) and raised; a worker
    process then exits with status 1 without printing a traceback (it does with
    ``ASYNCJOBS_LOG_LEVEL=debug``).
    """
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
        url = settings.require_redis_url()
        import_job_modules(settings.imports)
        app = get_app()
        if not len(app.registry):
            raise ConfigurationError(
                "no jobs are registered: set ASYNCJOBS_IMPORTS to the module(s) that define "
                "your @job functions, e.g. ASYNCJOBS_IMPORTS=myapp.jobs"
            )
        overrides = {
            field: own[name]
            for name, field in _SETTINGS_OPTIONS.items()
            if own.get(name) is not None
        }
        if own.get("keep_result") is not None:
            overrides["keep_result"] = float(own["keep_result"])
        if overrides:
            app.settings = dataclasses.replace(app.settings, **overrides)
        _probe(url, settings.redis_timeout)
    except ConfigurationError as exc:
        _log.error(logs.WORKER_MISCONFIGURED, error=str(exc))
        raise logs.already_logged(exc) from None
    cfg = app.settings
    retry = ReconnectingRetry()
    return {
        "functions": _placeholder_functions(app),
        "queue_name": cfg.queue_name,
        "redis_settings": redis_settings(cfg, retry),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "on_startup": _bridge(app, retry, own),
        # asyncjobs' loop installs its own handlers over arq's (which must exist, or arq's
        # close() would log a shutdown line of its own).
        "handle_signals": True,
        "max_jobs": own.get("max_jobs") or cfg.max_jobs,
        "job_timeout": cfg.job_timeout,
    }


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
