"""The low layer of an App: settings, the job registry, the middleware lists, the pools.

Dependencies in the package run one way. Below this module: settings, names,
the serializer, arq's boundary (:mod:`asyncjobs._arq`), the job registry, the
middleware types and the flag store. Above it, each feature takes a
:class:`Core` and nothing higher: enqueue, bulk enqueue, the kill-switch gates,
dead letters, reconcilers, cancel. :class:`asyncjobs.App` (in
:mod:`asyncjobs._app`) is a Core that wires the features together; the worker,
the CLI and the shell sit on top of it. A test imports every module alone and
checks that no module imports one that imports it back.

The requests that middleware receive carry the Core they run on as ``app``; at
run time it is the :class:`asyncjobs.App` that was called.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import asyncpg
import structlog

from . import _logs as logs
from ._arq import ArqRedis, AsyncScript, producer_pool
from ._exceptions import DatabaseUnavailableError
from ._flags import FlagStore
from ._jobs import JobSpec, Registry
from ._metrics_hooks import NO_INSTRUMENTS, Instruments
from ._middleware import Handler, MiddlewareList, compose
from ._settings import Settings, redact
from .serializer import deserialize, serialize

_log = structlog.get_logger("asyncjobs.app")


class Core:
    """Settings, the registry, the middleware lists, the flags and the pools of one App.

    Pools open lazily on first use; :meth:`close` closes them and the App can be used
    again afterwards (it reconnects).
    """

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        logs.configure_logging(settings.log_format, settings.log_level)
        self.registry = registry
        self.client_middleware: MiddlewareList[EnqueueRequest] = MiddlewareList()
        """Wraps every enqueue, first = outermost; changes apply from the next enqueue."""
        self.server_middleware: MiddlewareList[ExecutionRequest] = MiddlewareList()
        """Wraps every execution, first = outermost; read when a worker starts."""
        self.flags = FlagStore(self)
        """This App's flags: ``await app.flags.enable("disable_invoice_job")``."""
        self.instruments: Instruments = NO_INSTRUMENTS
        """What enqueues and job runs report to: nothing is counted unless metrics are
        enabled (:func:`asyncjobs.metrics.enable`, or ``ASYNCJOBS_METRICS_PORT`` in a worker)."""
        self._redis: ArqRedis | None = None
        self._db: asyncpg.Pool | None = None
        self._lock_db: asyncpg.Pool | None = None
        self._db_lock = asyncio.Lock()
        self._scripts: dict[str, AsyncScript] = {}
        self._chains: dict[Handler[EnqueueRequest], tuple[int, Handler[EnqueueRequest]]] = {}

    async def redis(self) -> ArqRedis:
        """The Redis client for enqueueing (connects on first command).

        Its connect timeout is ``settings.redis_timeout``; reads are bounded per call
        (``asyncio.timeout``) by the features, so a dead Redis fails an enqueue quickly
        instead of hanging a web handler. With a ``redis+sentinel://`` URL each new
        connection goes to the master the Sentinels name at that moment.
        """
        if self._redis is None:
            url = self.settings.require_redis_url()
            timeout = self.settings.redis_timeout
            # Not a socket read timeout: that would wrap every read in a timeout context.
            pool = producer_pool(url, timeout)
            self._redis = ArqRedis(
                pool,
                job_serializer=serialize,
                job_deserializer=deserialize,
                default_queue_name=self.settings.queue_name,
            )
        return self._redis

    async def script(self, lua: str) -> AsyncScript:
        """``lua`` registered on this App's Redis client (called by SHA, loaded on NOSCRIPT)."""
        script = self._scripts.get(lua)
        if script is None:
            script = self._scripts[lua] = (await self.redis()).register_script(lua)
        return script

    def client_chain(self, innermost: Handler[EnqueueRequest]) -> Handler[EnqueueRequest]:
        """The client middleware composed around ``innermost``; composed again when the
        list changed since (middleware added after the first enqueue takes effect)."""
        version = self.client_middleware.version
        cached = self._chains.get(innermost)
        if cached is None or cached[0] != version:
            cached = self._chains[innermost] = (version, compose(self.client_middleware, innermost))
        return cached[1]

    async def db(self) -> asyncpg.Pool:
        """The asyncpg pool, created on first use.

        Raises :class:`DatabaseUnavailableError` if PostgreSQL cannot be reached
        within ``settings.database_timeout``; the next call tries again.
        """
        if self._db is None:
            async with self._db_lock:
                if self._db is None:
                    self._db = await self._create_pool(self.settings.database_pool_size, "")
        return self._db

    async def lock_pool(self) -> asyncpg.Pool:
        """The pool whose connections hold advisory locks for exclusive jobs.

        Separate from :meth:`db` and at most ``settings.lock_connections`` large,
        so running exclusive jobs never starve other queries of connections.
        """
        if self._lock_db is None:
            async with self._db_lock:
                if self._lock_db is None:
                    self._lock_db = await self._create_pool(
                        self.settings.lock_connections, " for advisory locks"
                    )
        return self._lock_db

    async def _create_pool(self, max_size: int, purpose: str) -> asyncpg.Pool:
        url = self.settings.require_database_url()
        try:
            return await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=max_size,
                timeout=self.settings.database_timeout,
                command_timeout=max(self.settings.database_timeout, 30.0),
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _log.warning(logs.DATABASE_UNAVAILABLE, error=str(exc), url=redact(url))
            raise DatabaseUnavailableError(_database_error(exc, redact(url), purpose)) from exc

    def has_db(self) -> bool:
        """Whether the PostgreSQL pool is open."""
        return self._db is not None

    async def close(self) -> None:
        """Close the flag store's tasks and both pools."""
        await self.flags.close()
        redis, self._redis = self._redis, None
        self._scripts.clear()
        db, self._db = self._db, None
        lock_db, self._lock_db = self._lock_db, None
        if lock_db is not None:
            await lock_db.close()
        if redis is not None:
            await redis.aclose(close_connection_pool=True)
        if db is not None:
            await db.close()


def _database_error(exc: BaseException, url: str, purpose: str) -> str:
    """What to fix, for a PostgreSQL that refused or did not answer."""
    said = f"({type(exc).__name__}: {exc})"
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return (
            f"PostgreSQL at {url} refused the login{purpose} {said}. Check the user and "
            "password in ASYNCJOBS_DATABASE_URL."
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"PostgreSQL at {url} has no such database{purpose} {said}. Create it, or fix "
            "the database name in ASYNCJOBS_DATABASE_URL."
        )
    return (
        f"PostgreSQL at {url} is unreachable{purpose} {said}. Check ASYNCJOBS_DATABASE_URL "
        "and that PostgreSQL is running."
    )


# -- what jobs and middleware receive ----------------------------------------


class JobContext(TypedDict, total=False):
    """The ``ctx`` a job gets first, as arq gives it, with the keys asyncjobs reads.

    A worker's ``on_startup`` may add keys of its own (a session, a client): they are
    there at run time; read them with ``ctx.get(...)`` or a TypedDict of your own.
    """

    redis: ArqRedis
    """The worker's Redis client."""
    asyncjobs: Core
    """The worker's App: ``await ctx["asyncjobs"].db()`` is its PostgreSQL pool."""
    job_id: str
    job_try: int
    """Which try this is, from 1."""
    enqueue_time: datetime
    score: int
    """When the job was due, in milliseconds since the epoch (arq's queue score)."""
    queue_name: str
    """The queue the job was claimed from (asyncjobs' worker; arq's has no such key)."""
    trace_context: object
    """The trace context the payload carried, unchecked (only when the enqueue was traced)."""


@dataclass(slots=True)
class EnqueueRequest:
    """One enqueue on its way to Redis. Middleware may change ``options``."""

    app: Core
    spec: JobSpec
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    trace_context: dict[str, str] | None = None
    """Carried in the payload when set (by tracing's middleware): a W3C trace context."""

    @property
    def job_name(self) -> str:
        """The job's registered name."""
        return self.spec.name


@dataclass(slots=True)
class ExecutionRequest:
    """One execution of a job inside a worker; ``ctx`` is arq's job context."""

    app: Core
    spec: JobSpec
    ctx: JobContext
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    skipped: bool = False
    """Set by the kill switch's execution gate: this copy was not run. The run then ends
    without a result and is neither a success (a retried dead letter stays) nor a failure."""

    @property
    def job_name(self) -> str:
        """The job's registered name."""
        return self.spec.name

    @property
    def job_id(self) -> str:
        """arq's job id."""
        return str(self.ctx.get("job_id", ""))

    @property
    def job_try(self) -> int:
        """Which try this is, from 1."""
        return int(self.ctx.get("job_try", 1))
