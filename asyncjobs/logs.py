"""structlog configuration and the stable names of every event asyncjobs logs.

Events carry ``job`` (the job name), ``job_id``, ``job_try`` and, where it
applies, ``reason``, ``duration_ms`` and ``error`` as keys. Configuration
happens once, at the first App or worker start, and only if the application
has not configured structlog itself: call :func:`configure_logging` yourself,
or ``structlog.configure(...)`` before, to take over.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

JOB_ENQUEUED = "job.enqueued"
JOB_REJECTED = "job.rejected"
JOB_STARTED = "job.started"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
JOB_RETRYING = "job.retrying"
JOB_DROPPED = "job.dropped"
WORKER_STARTED = "worker.started"
WORKER_STOPPED = "worker.stopped"
WORKER_MISCONFIGURED = "worker.misconfigured"
HOOK_FAILED = "hook.failed"
REDIS_UNAVAILABLE = "redis.unavailable"
REDIS_RECONNECTED = "redis.reconnected"
DATABASE_UNAVAILABLE = "database.unavailable"
MIGRATION_APPLIED = "migration.applied"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(
    fmt: str = "auto", level: str = "info", *, stream: TextIO | None = None, force: bool = False
) -> None:
    """Configure structlog for asyncjobs' events: JSON lines, or a readable console.

    ``fmt="auto"`` picks the console renderer when ``stream`` is a TTY and JSON
    otherwise. Does nothing if structlog is already configured, unless ``force``.
    """
    if structlog.is_configured() and not force:
        return
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
