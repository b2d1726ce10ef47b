"""Configuration: one frozen dataclass, read from ``ASYNCJOBS_*`` variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from ._exceptions import ConfigurationError
from ._redis_url import SentinelURL, parse_sentinel_url

PREFIX = "ASYNCJOBS_"

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel"})
_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})
_LOG_FORMATS = frozenset({"auto", "json", "console"})
_LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
_POOL_MODES = ("auto", "session", "transaction")

HOW_TO_CONFIGURE = (
    "Set it to your server's URL, or run `asyncjobs dev` to start throwaway Redis and "
    "PostgreSQL servers and print the variables that point at them."
)


def _env(name: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": PREFIX + name, "help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything asyncjobs reads from the environment.

    Build it with :meth:`from_env` (the default App does) or directly, e.g. in tests.
    URLs may be ``None``: the error for a missing URL is raised when something needs
    the server (:meth:`require_redis_url`, :meth:`require_database_url`), so a web app
    that only enqueues needs no database URL.
    """

    redis_url: str | None = _env(
        "REDIS_URL",
        None,
        "Redis URL, e.g. redis://localhost:6379/0, or Redis Sentinel's: "
        "redis+sentinel://host1:26379,host2:26379/<service>/<db>",
    )
    database_url: str | None = _env(
        "DATABASE_URL", None, "PostgreSQL URL, e.g. postgresql://user@localhost:5432/app"
    )
    imports: tuple[str, ...] = _env(
        "IMPORTS", (), "comma-separated modules whose @job functions the worker registers"
    )
    queue_name: str = _env(
        "QUEUE", "arq:queue", "default queue name (default arq:queue, arq's own)"
    )
    queues: tuple[str, ...] = _env(
        "QUEUES",
        (),
        "comma-separated queues a worker reads (default: ASYNCJOBS_QUEUE and every queue "
        "a registered job names)",
    )
    heartbeat: float = _env(
        "HEARTBEAT",
        2.0,
        "seconds between a worker's heartbeats; 3 missed and its jobs are handed back (default 2)",
    )
    shutdown_grace: float = _env(
        "SHUTDOWN_GRACE",
        25.0,
        "seconds a stopping worker lets running jobs finish before handing them back (default 25)",
    )
    redis_timeout: float = _env(
        "REDIS_TIMEOUT", 2.0, "seconds an enqueue may wait for Redis before failing (default 2)"
    )
    database_timeout: float = _env(
        "DATABASE_TIMEOUT", 5.0, "seconds to wait for PostgreSQL before failing (default 5)"
    )
    max_jobs: int = _env("MAX_JOBS", 500, "jobs one worker process runs at once (default 500)")
    poll_delay: float = _env(
        "POLL_DELAY", 0.05, "seconds between queue polls when idle (default 0.05)"
    )
    job_timeout: float = _env("JOB_TIMEOUT", 300.0, "default seconds a job may run (default 300)")
    keep_result: float = _env(
        "KEEP_RESULT", 0.0, "seconds results are kept in Redis (default 0: not kept, see README)"
    )
    flag_ttl: float = _env(
        "FLAG_TTL", 2.0, "seconds a flag value is cached; the bound when notifications are lost"
    )
    flag_timeout: float = _env(
        "FLAG_TIMEOUT", 0.5, "seconds an enqueue waits for the flag store before using what it has"
    )
    flags_fail_closed: bool = _env(
        "FLAGS_FAIL_CLOSED",
        False,
        "true: treat every job as disabled while flags were never loaded (default false: run)",
    )
    database_pool_size: int = _env(
        "DATABASE_POOL_SIZE",
        10,
        "PostgreSQL connections an App's pool holds for jobs and asyncjobs' own queries "
        "(default 10)",
    )
    lock_connections: int = _env(
        "LOCK_CONNECTIONS",
        20,
        "PostgreSQL connections a worker holds for running exclusive jobs (default 20)",
    )
    database_listen_url: str | None = _env(
        "DATABASE_LISTEN_URL",
        None,
        "a direct PostgreSQL URL (not through a transaction pooler) for what needs a session "
        "of its own: flag change notifications and exclusive jobs' locks (default: "
        "ASYNCJOBS_DATABASE_URL unless that is transaction-pooled)",
    )
    database_pool_mode: str = _env(
        "DATABASE_POOL_MODE",
        "auto",
        "auto, session or transaction: how ASYNCJOBS_DATABASE_URL reaches PostgreSQL "
        "(transaction: through PgBouncer's pool_mode = transaction; auto detects it at start)",
    )
    tracing: bool = _env(
        "TRACING",
        False,
        "true: OpenTelemetry spans for every enqueue and job run, linked across processes "
        "(needs asyncjobs[otel]; default false)",
    )
    metrics_port: int | None = _env(
        "METRICS_PORT",
        None,
        "port on which each worker process serves /metrics, /healthz and /readyz "
        "(needs asyncjobs[metrics]; default none: not served)",
    )
    log_format: str = _env("LOG_FORMAT", "auto", "auto, json or console (auto: console on a TTY)")
    log_level: str = _env("LOG_LEVEL", "info", "debug, info, warning or error (default info)")

    def __post_init__(self) -> None:  # noqa: C901 -- one check per setting, each naming its variable
        # A Sentinel URL is checked by reading it (a malformed one raises).
        if self.redis_url is not None and parse_sentinel_url(self.redis_url) is None:
            _check_url(self.redis_url, _REDIS_SCHEMES, PREFIX + "REDIS_URL", "redis://host:6379/0")
        if self.database_url is not None:
            _check_url(
                self.database_url,
                _POSTGRES_SCHEMES,
                PREFIX + "DATABASE_URL",
                "postgresql://user@host:5432/dbname",
            )
        self._check_database_pooling()
        for name in (
            "redis_timeout",
            "database_timeout",
            "poll_delay",
            "job_timeout",
            "flag_ttl",
            "flag_timeout",
            "heartbeat",
        ):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{_var(name)} must be a positive number of seconds")
        if not self.shutdown_grace >= 0 or self.shutdown_grace == float("inf"):
            raise ConfigurationError(f"{_var('shutdown_grace')} must be 0 or more seconds")
        if self.heartbeat == float("inf"):
            raise ConfigurationError(f"{_var('heartbeat')} must be a finite number of seconds")
        for queue in self.queues:
            check_queue_name(queue, _var("queues"))
        if self.keep_result < 0:
            raise ConfigurationError(f"{_var('keep_result')} must be 0 or more seconds")
        if self.database_pool_size < 1:
            raise ConfigurationError(f"{_var('database_pool_size')} must be at least 1")
        if self.lock_connections < 1:
            raise ConfigurationError(f"{_var('lock_connections')} must be at least 1")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise ConfigurationError(f"{_var('metrics_port')} must be a port from 1 to 65535")
        if self.max_jobs < 1:
            raise ConfigurationError(f"{_var('max_jobs')} must be at least 1")
        if self.log_format not in _LOG_FORMATS:
            raise ConfigurationError(
                f"{_var('log_format')} must be one of {', '.join(sorted(_LOG_FORMATS))}, "
                f"not {self.log_format!r}"
            )
        if self.log_level not in _LOG_LEVELS:
            raise ConfigurationError(
                f"{_var('log_level')} must be one of {', '.join(sorted(_LOG_LEVELS))}, "
                f"not {self.log_level!r}"
            )
        check_queue_name(self.queue_name, _var("queue_name"))

    def _check_database_pooling(self) -> None:
        if self.database_listen_url is not None:
            _check_url(
                self.database_listen_url,
                _POSTGRES_SCHEMES,
                PREFIX + "DATABASE_LISTEN_URL",
                "postgresql://user@db-host:5432/dbname (PostgreSQL itself, not the pooler)",
            )
        if self.database_pool_mode not in _POOL_MODES:
            raise ConfigurationError(
                f"{_var('database_pool_mode')} must be one of {', '.join(_POOL_MODES)}, "
                f"not {self.database_pool_mode!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``ASYNCJOBS_*`` variable; a bad one is a :class:`ConfigurationError`."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f.name, raw.strip(), f.metadata["env"])
        return cls(**values)

    @property
    def redis_sentinel(self) -> SentinelURL | None:
        """The Sentinels, service and database of a ``redis+sentinel://`` URL, else ``None``."""
        if self.redis_url is None:
            return None
        return parse_sentinel_url(self.redis_url)

    def require_redis_url(self) -> str:
        """The Redis URL, or a :class:`ConfigurationError` saying how to set one."""
        if self.redis_url is None:
            raise ConfigurationError(f"{PREFIX}REDIS_URL is not set. {HOW_TO_CONFIGURE}")
        return self.redis_url

    def require_database_url(self) -> str:
        """The PostgreSQL URL, or a :class:`ConfigurationError` saying how to set one."""
        if self.database_url is None:
            raise ConfigurationError(f"{PREFIX}DATABASE_URL is not set. {HOW_TO_CONFIGURE}")
        return self.database_url


def environment_help() -> list[tuple[str, str]]:
    """(variable, description) for every setting, for ``--help`` and the README."""
    return [(f.metadata["env"], f.metadata["help"]) for f in fields(Settings)]


def _var(name: str) -> str:
    return PREFIX + name.upper() if name != "queue_name" else PREFIX + "QUEUE"


def _parse(name: str, raw: str, var: str) -> Any:
    default = Settings.__dataclass_fields__[name].default
    kind: type = str if default is None else type(default)
    if name == "metrics_port":
        kind = int
    if name == "imports":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name == "queues":
        parts = tuple(part.strip() for part in raw.split(","))
        if not all(parts):
            raise ConfigurationError(
                f"{var} must be queue names separated by commas, e.g. arq:queue,billing; "
                f"got {raw!r} (an empty name)"
            )
        return tuple(dict.fromkeys(parts))
    if name in ("log_format", "log_level", "database_pool_mode"):
        return raw.lower()
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{var} must be true or false, not {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(f"{var} must be a whole number, not {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{var} must be a number of seconds, not {raw!r}") from None
    return raw


def check_queue_name(name: str, what: str) -> None:
    """A :class:`ConfigurationError` naming ``what`` unless ``name`` can be a queue's key:
    not empty, no whitespace, and no key arq uses for something else (``arq:job:...``)."""
    from ._arq import ABORT_SET, IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, RETRY_PREFIX

    prefixes = (JOB_PREFIX, IN_PROGRESS_PREFIX, RESULT_PREFIX, RETRY_PREFIX)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{what} must not be empty")
    if any(ch.isspace() for ch in name):
        raise ConfigurationError(f"{what}: queue name {name!r} must not contain whitespace")
    if name == ABORT_SET or name.startswith(prefixes):
        raise ConfigurationError(
            f"{what}: queue name {name!r} would collide with arq's own keys "
            f"({', '.join(prefixes)}...); pick another name, e.g. arq:queue:billing"
        )


_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "pwd"})


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs: the
    ``user:password@`` form and a ``?password=`` query parameter alike."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
            parts = parts._replace(netloc=netloc)
        if parts.query:
            query = [
                (key, "***" if key.lower() in _SECRET_PARAMS else value)
                for key, value in parse_qsl(parts.query, keep_blank_values=True)
            ]
            parts = parts._replace(query=urlencode(query, safe="*"))
        return parts.geturl()
    except ValueError:
        return "<unparseable URL>"


def _check_url(raw: str, schemes: frozenset[str], var: str, example: str) -> None:
    url = redact(raw)
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(
            f"{var} is malformed ({exc}): {url!r}; expected e.g. {example}"
        ) from None
    if parts.scheme not in schemes:
        raise ConfigurationError(
            f"{var} must start with {' or '.join(s + '://' for s in sorted(schemes))}, "
            f"got {url!r}; expected e.g. {example}"
        )
    if parts.scheme != "unix" and not parts.hostname and not parts.path.startswith("/"):
        raise ConfigurationError(f"{var} has no host: {url!r}; expected e.g. {example}")
