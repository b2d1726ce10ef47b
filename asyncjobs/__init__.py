"""asyncjobs: an asyncio-native background-job runtime on arq, Redis and PostgreSQL.

Define jobs with :func:`job`, enqueue them with :func:`enqueue` from async code,
and run workers with ``arq asyncjobs.WorkerSettings``.
"""

from __future__ import annotations

from . import flags
from ._version import __version__ as __version__
from .app import (
    App,
    cancel,
    enqueue,
    enqueue_many,
    enqueue_stream,
    get_app,
    reset_app,
    set_app,
)
from .bulk import Args, BulkStats
from .exceptions import (
    AsyncJobsError,
    CancelError,
    ConfigurationError,
    DatabaseUnavailableError,
    DuplicateJobError,
    EnqueueError,
    EnqueueOutcomeUnknownError,
    FlagNameError,
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
from .jobs import JobSpec, Registry, job
from .locks import row_lock
from .logs import configure_logging
from .middleware import EnqueueRequest, ExecutionRequest, Middleware
from .naming import flag_name, snake_case
from .reconcilers import Reconciler, ReconcileResult, reconciler, stable_job_id
from .retries import Backoff, DeadLetter
from .settings import Settings
from .worker import WorkerSettings

__all__ = [
    "App",
    "Args",
    "AsyncJobsError",
    "Backoff",
    "BulkStats",
    "CancelError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DuplicateJobError",
    "EnqueueError",
    "EnqueueOutcomeUnknownError",
    "EnqueueRequest",
    "ExecutionRequest",
    "FlagNameError",
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
]
