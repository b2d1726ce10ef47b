"""The App: configuration, the Redis and PostgreSQL pools, the registry and middleware.

An App opens its pools lazily on first use and closes them with :meth:`App.close`
or ``async with``. Plug it into a web framework's lifespan::

    app = asyncjobs.App()

    @contextlib.asynccontextmanager
    async def lifespan(_):
        async with app:
            yield

The module-level functions (``asyncjobs.enqueue`` ...) use one default App,
built from :meth:`Settings.from_env` on first use; :func:`set_app` replaces it
and :func:`reset_app` forgets it (for tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from . import flags as flags_module
from . import logs
from ._arq import ArqRedis, AsyncScript, ConnectionPool, Job
from .enqueue import ENQUEUE_LUA, ENQUEUE_UNIQUE_LUA, split_options, write_job
from .exceptions import DatabaseUnavailableError
from .jobs import Registry, default_registry
from .middleware import (
    EnqueueRequest,
    ExecutionRequest,
    Handler,
    Middleware,
    MiddlewareList,
    compose,
)
from .retries import DeadLetters
from .serializer import deserialize, serialize
from .settings import Settings, redact

if TYPE_CHECKING:
    from ._cancel import CancelResult
    from .bulk import BulkStats
    from .reconcilers import ReconcilerRegistry

_log = structlog.get_logger("asyncjobs.app")


class App:
    """Owns the pools, the registry and the middleware chains.

    ``settings`` defaults to :meth:`Settings.from_env`; ``registry`` to the one
    ``@job`` fills. ``client_middleware`` wraps every enqueue and
    ``server_middleware`` every execution in a worker, first = outermost. The
    kill switch (:mod:`asyncjobs.flags`) is the outermost of both unless
    ``kill_switch=False``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        reconcilers: ReconcilerRegistry | None = None,
        client_middleware: Sequence[Middleware[EnqueueRequest]] = (),
        server_middleware: Sequence[Middleware[ExecutionRequest]] = (),
        kill_switch: bool = True,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        logs.configure_logging(self.settings.log_format, self.settings.log_level)
        self.registry = registry if registry is not None else default_registry
        from .reconcilers import default_reconcilers

        self.reconcilers = reconcilers if reconcilers is not None else default_reconcilers
        self.client_middleware: MiddlewareList[EnqueueRequest] = MiddlewareList()
        """Wraps every enqueue, first = outermost; changes apply from the next enqueue."""
        self.server_middleware: MiddlewareList[ExecutionRequest] = MiddlewareList()
        """Wraps every execution, first = outermost; read when a worker starts."""
        if kill_switch:
            self.client_middleware.append(flags_module.kill_switch)
            self.server_middleware.append(flags_module.execution_gate)
        self.client_middleware += client_middleware
        self.server_middleware += server_middleware
        self.flags = flags_module.FlagStore(self)
        """This App's flags: ``await app.flags.enable("disable_invoice_job")``."""
        self.dead = DeadLetters(self)
        """This App's dead letters: ``await app.dead.list()``, ``retry(id)``, ``purge()``."""
        self._redis: ArqRedis | None = None
        self._db: asyncpg.Pool | None = None
        self._lock_db: asyncpg.Pool | None = None
        self._db_lock = asyncio.Lock()
        self._client_chain: Handler[EnqueueRequest] | None = None
        self._client_version = -1
        self._bulk_chain: Handler[EnqueueRequest] | None = None
        self._bulk_version = -1
        self._enqueue_scripts: dict[bool, AsyncScript] = {}

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def redis(self) -> ArqRedis:
        """The Redis client for enqueueing (connects on first command).

        Its connect and read timeouts are ``settings.redis_timeout``, so a dead
        Redis fails an enqueue quickly instead of hanging a web handler.
        """
        if self._redis is None:
            url = self.settings.require_redis_url()
            timeout = self.settings.redis_timeout
            # Reads are bounded per enqueue (asyncio.timeout), not per socket read:
            # a socket timeout would wrap every read in a timeout context of its own.
            pool = ConnectionPool.from_url(url, socket_connect_timeout=timeout)
            self._redis = ArqRedis(
                pool,
                job_serializer=serialize,
                job_deserializer=deserialize,
                default_queue_name=self.settings.queue_name,
            )
        return self._redis

    async def enqueue_script(self, *, unique: bool = False) -> AsyncScript:
        """The enqueue Lua script (with uniqueness locks or not) on this App's Redis client."""
        script = self._enqueue_scripts.get(unique)
        if script is None:
            lua = ENQUEUE_UNIQUE_LUA if unique else ENQUEUE_LUA
            script = self._enqueue_scripts[unique] = (await self.redis()).register_script(lua)
        return script

    def bulk_chain(self) -> Handler[EnqueueRequest]:
        """The client chain whose innermost step collects jobs for a batch write."""
        if self._bulk_chain is None or self._bulk_version != self.client_middleware.version:
            from .bulk import bulk_chain

            self._bulk_version = self.client_middleware.version
            self._bulk_chain = bulk_chain(self)
        return self._bulk_chain

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

    async def enqueue(self, job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
        """Enqueue ``job`` (a decorated job or its name) with ``args`` and ``kwargs``.

        Keyword arguments starting with ``_`` are arq's options: ``_job_id``,
        ``_queue_name``, ``_defer_by``, ``_defer_until``, ``_expires``, ``_job_try``.
        Returns arq's :class:`~arq.jobs.Job`, or ``None`` when a client middleware
        rejected the job or a job with the same ``_job_id`` exists. Raises an
        :class:`EnqueueError` subclass for a call that cannot be right (nothing is
        written) and :class:`RedisUnavailableError` when Redis is unreachable.
        """
        spec = self.registry.resolve(job)
        job_kwargs, options = split_options(spec, args, kwargs)
        chain = self._client_chain
        if chain is None or self._client_version != self.client_middleware.version:
            self._client_version = self.client_middleware.version
            chain = self._client_chain = compose(self.client_middleware, write_job)
        result: Job | None = await chain(EnqueueRequest(self, spec, args, job_kwargs, options))
        return result

    async def enqueue_many(
        self,
        job: Any,
        items: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        batch_size: int = 1000,
        **options: Any,
    ) -> list[Job | None]:
        """Enqueue one ``job`` per item, ``batch_size`` per Redis round trip.

        An item is a tuple of positional arguments, an :class:`~asyncjobs.Args`
        (keyword arguments and per-job ``_options``), or the job's one argument.
        ``options`` (``_defer_by``, ``_jitter`` ...) apply to every job. Returns,
        in input order, each job's :class:`~arq.jobs.Job` or ``None`` (rejected by
        middleware, or a duplicate ``_job_id``). Every result is kept: for millions
        of items use :meth:`enqueue_stream`. See :mod:`asyncjobs.bulk`.
        """
        from .bulk import enqueue_many

        return await enqueue_many(self, job, items, batch_size=batch_size, **options)

    def enqueue_stream(
        self,
        job: Any,
        items: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        batch_size: int = 1000,
        stats: BulkStats | None = None,
        **options: Any,
    ) -> AsyncIterator[list[Job | None]]:
        """Like :meth:`enqueue_many`, yielding each batch's results: memory stays bounded.

        ``stats`` (a :class:`~asyncjobs.bulk.BulkStats`) collects the counts if given.
        """
        from .bulk import enqueue_stream

        return enqueue_stream(self, job, items, batch_size=batch_size, stats=stats, **options)

    async def cancel(
        self,
        job_id: str,
        *,
        reason: str | None = None,
        actor: str | None = None,
        queue: str | None = None,
    ) -> CancelResult:
        """Cancel a job: a queued or deferred one is removed, a running one is stopped where
        it runs within a second, neither retried nor dead-lettered. ``outcome`` of the
        result says which, or ``"not_found"``/``"finished"``; see :mod:`asyncjobs._cancel`.
        Raises :class:`CancelError` for a malformed id or an unreachable Redis."""
        from ._cancel import cancel

        return await cancel(self, job_id, reason=reason, actor=actor, queue=queue)

    async def migrate(self) -> list[str]:
        """Apply the runtime's pending schema migrations; returns the names applied."""
        from .schema import migrate

        pool = await self.db()
        async with pool.acquire() as conn:
            return await migrate(conn)

    def has_db(self) -> bool:
        """Whether the PostgreSQL pool is open."""
        return self._db is not None

    async def close(self) -> None:
        """Close both pools. The App can be used again afterwards (it reconnects)."""
        await self.flags.close()
        redis, self._redis = self._redis, None
        self._enqueue_scripts.clear()
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


_default_app: App | None = None


def get_app() -> App:
    """The default App, built from the environment on first use."""
    global _default_app
    if _default_app is None:
        _default_app = App()
    return _default_app


def set_app(app: App | None) -> App | None:
    """Make ``app`` the default App; returns the previous one (not closed)."""
    global _default_app
    previous, _default_app = _default_app, app
    return previous


def reset_app() -> None:
    """Forget the default App, so the next use builds it anew (for tests)."""
    set_app(None)


async def enqueue(job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
    """:meth:`App.enqueue` on the default App."""
    return await get_app().enqueue(job, *args, **kwargs)


async def enqueue_many(
    job: Any,
    items: Iterable[Any] | AsyncIterable[Any],
    /,
    *,
    batch_size: int = 1000,
    **options: Any,
) -> list[Job | None]:
    """:meth:`App.enqueue_many` on the default App."""
    return await get_app().enqueue_many(job, items, batch_size=batch_size, **options)


def enqueue_stream(
    job: Any,
    items: Iterable[Any] | AsyncIterable[Any],
    /,
    *,
    batch_size: int = 1000,
    **options: Any,
) -> AsyncIterator[list[Job | None]]:
    """:meth:`App.enqueue_stream` on the default App."""
    return get_app().enqueue_stream(job, items, batch_size=batch_size, **options)


async def cancel(
    job_id: str, *, reason: str | None = None, actor: str | None = None, queue: str | None = None
) -> CancelResult:
    """:meth:`App.cancel` on the default App."""
    return await get_app().cancel(job_id, reason=reason, actor=actor, queue=queue)
