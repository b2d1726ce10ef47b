"""structlog configuration and the stable names of every event asyncjobs logs.

Events carry ``job`` (the job name), ``job_id``, ``job_try`` and, where it
applies, ``reason``, ``duration_ms`` and ``error`` as keys. Configuration
happens once, at the first App or worker start, and only if the application
has not configured structlog itself: call :func:`configure_logging` yourself,
or ``structlog.configure(...)`` before, to take over.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from typing import Any, TextIO

import structlog

JOB_ENQUEUED = "job.enqueued"
JOBS_ENQUEUED = "jobs.enqueued"
JOB_REJECTED = "job.rejected"
JOB_STARTED = "job.started"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
JOB_RETRYING = "job.retrying"
JOB_DEAD = "job.dead"
JOB_LOCKED = "job.locked"
UNIQUE_RELEASE_FAILED = "unique.release_failed"
JOB_SKIPPED = "job.skipped"
FLAG_CHANGED = "flag.changed"
CONTROL_CHANGED = "control.changed"
QUEUES_PAUSED = "worker.queues_paused"
JOBS_THROTTLED = "jobs.throttled"
FLAGS_UNAVAILABLE = "flags.unavailable"
FLAGS_RECOVERED = "flags.recovered"
WORKER_STARTED = "worker.started"
WORKER_STOPPED = "worker.stopped"
WORKER_STOPPING = "worker.stopping"
WORKER_RECOVERED = "worker.recovered"
WORKER_PRESUMED_DEAD = "worker.presumed_dead"
WORKER_CLAIM_FAILED = "worker.claim_failed"
WORKER_FINISH_FAILED = "worker.finish_failed"
WORKER_HEARTBEAT_FAILED = "worker.heartbeat_failed"
WORKER_DEREGISTER_FAILED = "worker.deregister_failed"
WORKER_CRON_FAILED = "worker.cron_failed"
WORKER_ERROR = "worker.error"
JOB_REQUEUED = "job.requeued"
JOB_EXPIRED = "job.expired"
JOB_TIDY_FAILED = "job.tidy_failed"
JOB_DEAD_LETTER_FAILED = "job.dead_letter_failed"
WORKER_MISCONFIGURED = "worker.misconfigured"
HOOK_FAILED = "hook.failed"
REDIS_UNAVAILABLE = "redis.unavailable"
REDIS_RECONNECTED = "redis.reconnected"
DATABASE_UNAVAILABLE = "database.unavailable"
DATABASE_POOL_SMALL = "database.pool_small"
DATABASE_TRANSACTION_POOLING = "database.transaction_pooling"
MIGRATION_APPLIED = "migration.applied"
RECONCILER_FINISHED = "reconciler.finished"
RECONCILER_FAILED = "reconciler.failed"
DASHBOARD_ACTION = "dashboard.action"
TRACE_CONTEXT_INVALID = "trace.context_invalid"
OUTBOX_WRITTEN = "outbox.written"
OUTBOX_RELAYED = "outbox.relayed"
OUTBOX_RELAY_FAILED = "outbox.relay_failed"
OUTBOX_REFUSED = "outbox.refused"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class LoopBatchedWriter:
    """A structlog logger that writes each event loop iteration's lines in one write.

    On a thread with a running event loop, lines are buffered and flushed by a
    callback scheduled with ``call_soon``: a busy worker pays one write per loop
    iteration instead of one per event, and nothing waits longer than the
    iteration that logged it. Elsewhere each line is written at once.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._buffer: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        with self._lock:
            self._buffer.append(message)
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._scheduled = True
                loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._buffer:
                return
            data = "\n".join(self._buffer) + "\n"
            self._buffer.clear()
        try:
            self._file.write(data)
            self._file.flush()
        except (OSError, ValueError):  # closed or broken stream: logging must not raise
            pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _writer_factory(file: TextIO) -> Any:
    writer = LoopBatchedWriter(file)

    def factory(*_args: Any) -> LoopBatchedWriter:
        return writer

    return factory


class _ToStructlog(logging.Handler):
    """A logging handler that sends each record through structlog (one stream, one format)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **extra)
        except Exception:
            self.handleError(record)


def route_stdlib_logging(level: str = "info") -> None:
    """Send every ``logging`` record (arq's, asyncpg's, redis-py's, asyncio's, warnings)
    and uncaught exceptions through structlog, so a worker writes one stream in one
    format: with JSON output, one object per line, tracebacks inside it."""
    handler = _ToStructlog()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        if logger.handlers:  # e.g. arq's own, set by its command's dictConfig
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.propagate = True
    logging.captureWarnings(True)

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if getattr(value, _LOGGED_MARK, False) and level != "debug":
            return  # its one clear line is in the log already; the exit status says the rest
        if issubclass(kind, KeyboardInterrupt):
            return  # Ctrl-C: nothing to report
        structlog.get_logger("asyncjobs").critical(
            "process.crashed", error=f"{kind.__name__}: {value}", exc_info=(kind, value, tb)
        )
        flush = getattr(structlog.get_config()["logger_factory"](), "flush", None)
        if callable(flush):
            flush()

    sys.excepthook = excepthook


_LOGGED_MARK = "__asyncjobs_logged__"


def already_logged(exc: BaseException) -> BaseException:
    """Mark ``exc`` as said in the log already: if it ends the process, the hook set by
    :func:`route_stdlib_logging` adds no traceback (unless the level is debug)."""
    setattr(exc, _LOGGED_MARK, True)
    return exc


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    *,
    stream: TextIO | None = None,
    force: bool = False,
    cache: bool = True,
) -> None:
    """Configure structlog for asyncjobs' events: JSON lines, or a readable console.

    ``fmt="auto"`` picks the console renderer when ``stream`` is a TTY and JSON
    otherwise. Does nothing if structlog is already configured, unless ``force``.
    ``cache=False`` lets ``structlog.testing.capture_logs`` see every logger.
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
        logger_factory=_writer_factory(out),
        cache_logger_on_first_use=cache,
    )
