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
from ._exceptions import ConfigurationError, DatabaseUnavailableError
from ._flags import FlagStore
from ._jobs import JobSpec, Registry
from ._metrics_hooks import NO_INSTRUMENTS, Instruments
from ._middleware import Handler, MiddlewareList, compose
from ._pooling import (
    LISTEN_URL_VAR,
    Pooling,
    behind_pooler,
    pooled_listen_url_message,
    session_needed_message,
    transaction_pooled,
)
from ._settings import Settings, redact
from .serializer import deserialize, serialize

_log = structlog.get_logger("asyncjobs.app")
DATABASE_URL_VAR = "ASYNCJOBS_DATABASE_URL"


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
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop the connections were opened on (they work on no other)."""
        self._lock_db: asyncpg.Pool | None = None
        self._db_lock = asyncio.Lock()
        self.pooling: Pooling | None = None
        """How ``ASYNCJOBS_DATABASE_URL`` reaches PostgreSQL, once the pool has opened."""
        self._listen_checked: bool | None = None
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
            self._loop = self._loop or asyncio.get_running_loop()
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

        When it first opens, the App settles how ``ASYNCJOBS_DATABASE_URL`` reaches
        PostgreSQL (:attr:`pooling`): through a pooler in transaction mode the pool
        keeps no server-side prepared statements, and that is logged once
        (``database.transaction_pooling``). Raises :class:`DatabaseUnavailableError`
        if PostgreSQL cannot be reached within ``settings.database_timeout``; the next
        call tries again.
        """
        if self._db is None:
            self._loop = self._loop or asyncio.get_running_loop()
            async with self._db_lock:
                if self._db is None:
                    self._db = await self._open_db()
        return self._db

    async def _open_db(self) -> asyncpg.Pool:
        url = self.settings.require_database_url()
        size = self.settings.database_pool_size
        mode = self.settings.database_pool_mode
        if self.pooling is None and mode != "auto":
            self.pooling = Pooling(transaction=mode == "transaction", source="configured")
            self._say_pooling()
        cache = self.pooling is None or not self.pooling.transaction
        pool = await self._create_pool(url, size, "", statement_cache=cache)
        if self.pooling is None:
            try:
                self.pooling = await self._detect(url, pool)
            except BaseException:
                await pool.close()
                raise
            self._say_pooling()
            if self.pooling.transaction:  # its statement cache would break: open it anew
                await pool.close()
                pool = await self._create_pool(url, size, "", statement_cache=False)
        return pool

    async def _detect(self, url: str, pool: asyncpg.Pool) -> Pooling:
        """Whether ``url`` is transaction-pooled: one query on ``pool`` for a direct
        connection, two probe connections behind a pooler (:mod:`asyncjobs._pooling`)."""
        try:
            async with pool.acquire() as conn:
                pooled = await behind_pooler(conn, self.settings.database_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _log.warning(logs.DATABASE_UNAVAILABLE, error=str(exc), url=redact(url))
            raise DatabaseUnavailableError(_database_error(exc, redact(url), "")) from exc
        if pooled:
            pooled = await self._probe(url, DATABASE_URL_VAR, "")
        return Pooling(transaction=pooled, source="detected")

    async def _probe(self, url: str, var: str, purpose: str) -> bool:
        try:
            return await transaction_pooled(url, self.settings.database_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _log.warning(logs.DATABASE_UNAVAILABLE, error=str(exc), url=redact(url))
            raise DatabaseUnavailableError(_database_error(exc, redact(url), purpose, var)) from exc

    def _say_pooling(self) -> None:
        pooling = self.pooling
        if pooling is None or not pooling.transaction:
            return
        direct = self.settings.database_listen_url is not None
        log = _log.info if direct else _log.warning
        log(
            logs.DATABASE_TRANSACTION_POOLING,
            source=pooling.source,
            prepared_statements="off",
            flags=f"notified over {LISTEN_URL_VAR}"
            if direct
            else f"read again every ASYNCJOBS_FLAG_TTL ({self.settings.flag_ttl:g}s): a change "
            "takes up to that long to reach this process",
            exclusive_jobs=f"locked over {LISTEN_URL_VAR}"
            if direct
            else f"refused until {LISTEN_URL_VAR} is set",
        )

    async def session_url(self, what: str) -> str | None:
        """The URL of a PostgreSQL session of its own, for ``what`` (LISTEN, session advisory
        locks): ``ASYNCJOBS_DATABASE_LISTEN_URL`` if set, else ``ASYNCJOBS_DATABASE_URL``
        unless that is transaction-pooled, else ``None``.

        A listen URL that is itself transaction-pooled (checked once, unless the pool mode
        is configured) is a :class:`ConfigurationError` naming it and the fix.
        """
        listen = self.settings.database_listen_url
        if listen is None:
            await self.db()  # settles self.pooling
            assert self.pooling is not None
            return None if self.pooling.transaction else self.settings.database_url
        if self._listen_checked is None:
            if self.settings.database_pool_mode == "auto":
                self._listen_checked = not await self._probe(listen, LISTEN_URL_VAR, f" for {what}")
            else:
                self._listen_checked = True
        if not self._listen_checked:
            raise ConfigurationError(pooled_listen_url_message(redact(listen)))
        return listen

    async def lock_pool(self) -> asyncpg.Pool:
        """The pool whose connections hold advisory locks for exclusive jobs.

        Separate from :meth:`db` and at most ``settings.lock_connections`` large,
        so running exclusive jobs never starve other queries of connections. Its
        connections are sessions of their own (:meth:`session_url`): when there is none,
        a :class:`ConfigurationError` naming ``ASYNCJOBS_DATABASE_LISTEN_URL``.
        """
        if self._lock_db is None:
            url = await self.session_url("an exclusive job's lock")
            if url is None:
                raise ConfigurationError(session_needed_message("an exclusive job's lock"))
            async with self._db_lock:
                if self._lock_db is None:
                    var = DATABASE_URL_VAR if url == self.settings.database_url else LISTEN_URL_VAR
                    self._lock_db = await self._create_pool(
                        url, self.settings.lock_connections, " for advisory locks", var=var
                    )
        return self._lock_db

    async def _create_pool(
        self,
        url: str,
        max_size: int,
        purpose: str,
        *,
        statement_cache: bool = True,
        var: str = DATABASE_URL_VAR,
    ) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=max_size,
                timeout=self.settings.database_timeout,
                command_timeout=max(self.settings.database_timeout, 30.0),
                # asyncpg's default (100 per connection) unless a transaction pooler would
                # send a later use of a prepared statement to a server that never saw it.
                statement_cache_size=100 if statement_cache else 0,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _log.warning(logs.DATABASE_UNAVAILABLE, error=str(exc), url=redact(url))
            raise DatabaseUnavailableError(_database_error(exc, redact(url), purpose, var)) from exc

    def loop_gone(self) -> bool:
        """Whether this App's connections were opened on an event loop that has closed or
        is not the one running now, so that they cannot serve this one."""
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is not loop
        except RuntimeError:  # no loop runs: the connections wait for theirs, if it is open
            return loop.is_closed()

    def has_db(self) -> bool:
        """Whether the PostgreSQL pool is open."""
        return self._db is not None

    async def close(self) -> None:
        """Close the flag store's tasks and both pools."""
        await self.flags.close()
        self._loop = None
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


def _database_error(exc: BaseException, url: str, purpose: str, var: str = DATABASE_URL_VAR) -> str:
    """What to fix, for a PostgreSQL that refused or did not answer."""
    said = f"({type(exc).__name__}: {exc})"
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return (
            f"PostgreSQL at {url} refused the login{purpose} {said}. Check the user and "
            f"password in {var}."
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"PostgreSQL at {url} has no such database{purpose} {said}. Create it, or fix "
            f"the database name in {var}."
        )
    return (
        f"PostgreSQL at {url} is unreachable{purpose} {said}. Check {var} "
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
