"""Errors raised by asyncjobs.

Every error has one root, so ``except AsyncJobsError`` catches them all::

    AsyncJobsError
    ├── ConfigurationError          a setting is missing or malformed
    ├── FlagNameError               a flag name that is not lower_snake_case
    ├── FlagRuleError               an argument rule or a timed stop that cannot be right
    ├── ControlError                a throttle or pause that cannot be set (bad rate, job)
    ├── JobDefinitionError          ``@job`` was used on something it cannot run
    │   └── DuplicateJobError       two different jobs claim one job name
    ├── EnqueueError                ``enqueue()`` was called wrongly; nothing was written
    │   ├── UnknownJobError         no registered job has that name
    │   ├── UnknownOptionError      an ``_option`` that enqueue does not know (a typo)
    │   ├── InvalidOptionError      a known option with a value it cannot take
    │   ├── JobArgumentsError       the arguments do not fit the job's signature
    │   └── JobSerializationError   an argument cannot be written as JSON
    ├── ServiceUnavailableError     a server could not be reached in time
    │   ├── RedisUnavailableError
    │   │   └── EnqueueOutcomeUnknownError  sent, but Redis did not answer: maybe enqueued
    │   └── DatabaseUnavailableError
    ├── MigrationError              the runtime's schema could not be applied
    ├── JobFailed                   a job's stored outcome: it raised (``job.result()``)
    ├── RunLimitError               ``capture().run_all()`` ran its limit of jobs, more were left
    └── CancelError                 ``cancel()`` could not act on that job id

A class's docstring is its default message. Errors from redis-py and asyncpg
are translated at the boundary (``raise ... from exc``), so the driver's own
error stays available as ``__cause__``.
"""

from __future__ import annotations


class AsyncJobsError(Exception):
    """asyncjobs failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(AsyncJobsError):
    """A setting is missing or malformed; see `asyncjobs --help` for the variables."""


class FlagNameError(AsyncJobsError):
    """Flag names are lower-case letters, digits and underscores, starting with a letter."""


class FlagRuleError(AsyncJobsError):
    """An argument rule (``--where``) or the end of a timed stop (``--for``, ``--until``)
    cannot be right; nothing was stored."""


class ControlError(AsyncJobsError):
    """A throttle or a queue pause that cannot be set (a malformed rate, an unknown job, a
    bad queue name); nothing was stored."""


class JobDefinitionError(AsyncJobsError):
    """@job was applied to something asyncjobs cannot run."""


class DuplicateJobError(JobDefinitionError):
    """Two different jobs are registered under one job name; rename one with @job(name=...)."""


class EnqueueError(AsyncJobsError):
    """The job was not enqueued because the call was wrong; nothing was written to Redis."""


class UnknownJobError(EnqueueError):
    """No registered job has this name; import the module that defines it, or check the spelling."""


class UnknownOptionError(EnqueueError):
    """enqueue() got an option it does not know; job parameters may not start with '_'."""


class InvalidOptionError(EnqueueError):
    """An enqueue option has a value it cannot take."""


class JobArgumentsError(EnqueueError):
    """The arguments do not match the job's signature."""


class JobSerializationError(EnqueueError):
    """An argument cannot be serialized to JSON; pass str, int, float, bool, None, list or dict."""


class ServiceUnavailableError(AsyncJobsError):
    """A server asyncjobs depends on could not be reached in time."""


class RedisUnavailableError(ServiceUnavailableError):
    """Redis could not be reached in time; the job was not enqueued."""


class EnqueueOutcomeUnknownError(RedisUnavailableError):
    """The write was sent but Redis did not answer in time: the job may or may not be
    enqueued. ``job_ids`` names them: enqueue again with the same ``_job_id`` (a
    duplicate is refused) or look with arq's ``Job(job_id, redis).status()``."""

    def __init__(self, message: str | None = None, job_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.job_ids = job_ids


class DatabaseUnavailableError(ServiceUnavailableError):
    """PostgreSQL could not be reached in time."""


class MigrationError(AsyncJobsError):
    """The asyncjobs schema could not be applied to the database."""


class JobFailed(AsyncJobsError):
    """The job failed.

    What arq's ``job.result()`` raises for a job that failed for good: its
    ``error_class`` (the exception's class name, e.g. ``"ValueError"``) and
    ``message``. Rebuilt from the stored JSON, never unpickled.
    """

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(f"{error_class}: {message}" if message else error_class)
        self.error_class = error_class
        self.message = message


class RunLimitError(AsyncJobsError):
    """run_all() ran as many jobs as its limit allows and jobs were still left: a job that
    enqueues itself without end? Raise the limit with run_all(limit=N) if the work is that large."""


class CancelError(AsyncJobsError):
    """The job could not be cancelled: a malformed id, or Redis unreachable; nothing changed."""
