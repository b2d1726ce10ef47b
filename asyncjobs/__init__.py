"""asyncjobs: an asyncio-native background-job runtime on arq, Redis and PostgreSQL.

Define jobs with :func:`job`, enqueue them with :func:`enqueue` from async code,
and run workers with ``arq asyncjobs.WorkerSettings``.
"""

from __future__ import annotations

from . import flags as flags
from ._app import (
    App,
    cancel,
    enqueue,
    enqueue_many,
    enqueue_stream,
    get_app,
    reset_app,
    set_app,
    with_options,
)
from ._backoff import Backoff
from ._bulk import Args, BulkStats
from ._core import EnqueueRequest, ExecutionRequest
from ._exceptions import (
    AsyncJobsError,
    CancelError,
    ConfigurationError,
    ControlError,
    DatabaseUnavailableError,
    DuplicateJobError,
    EnqueueError,
    EnqueueOutcomeUnknownError,
    FlagNameError,
    FlagRuleError,
    InvalidOptionError,
    JobArgumentsError,
    JobDefinitionError,
    JobFailed,
    JobSerializationError,
    MigrationError,
    RedisUnavailableError,
    ServiceUnavailableError,
    UnknownJobError,
    UnknownOptionError,
)
from ._jobs import JobSpec, Registry, job
from ._locks import row_lock
from ._logs import configure_logging
from ._middleware import Middleware
from ._naming import flag_name, snake_case
from ._reconcilers import Reconciler, ReconcileResult, reconciler, stable_job_id
from ._retries import DeadLetter
from ._schedule import Cron
from ._settings import Settings
from ._version import __version__ as __version__
from ._worker import WorkerSettings

__all__ = [
    "App",
    "Args",
    "AsyncJobsError",
    "Backoff",
    "BulkStats",
    "CancelError",
    "ConfigurationError",
    "ControlError",
    "Cron",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DuplicateJobError",
    "EnqueueError",
    "EnqueueOutcomeUnknownError",
    "EnqueueRequest",
    "ExecutionRequest",
    "FlagNameError",
    "FlagRuleError",
    "InvalidOptionError",
    "JobArgumentsError",
    "JobDefinitionError",
    "JobFailed",
    "JobSerializationError",
    "JobSpec",
    "Middleware",
    "MigrationError",
    "ReconcileResult",
    "Reconciler",
    "RedisUnavailableError",
    "Registry",
    "ServiceUnavailableError",
    "Settings",
    "UnknownJobError",
    "UnknownOptionError",
    "WorkerSettings",
    "cancel",
    "configure_logging",
    "enqueue",
    "enqueue_many",
    "enqueue_stream",
    "flag_name",
    "flags",
    "get_app",
    "job",
    "reconciler",
    "reset_app",
    "row_lock",
    "set_app",
    "snake_case",
    "stable_job_id",
    "with_options",
]
