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

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Unpack, overload

from ._arq import Job
from ._bulk import BulkStats
from ._bulk import enqueue_many as _enqueue_many
from ._bulk import enqueue_stream as _enqueue_stream
from ._cancel import CancelResult
from ._cancel import cancel as _cancel
from ._core import Core, EnqueueRequest, ExecutionRequest
from ._enqueue import enqueue as _enqueue
from ._exceptions import InvalidOptionError
from ._gates import execution_gate
from ._gates import kill_switch as _kill_switch
from ._jobs import Registry, default_registry
from ._middleware import Middleware
from ._outbox import Relay
from ._outbox import enqueue as _enqueue_in_transaction
from ._reconcilers import ReconcilerRegistry, default_reconcilers
from ._retries import DeadLetters
from ._schema import migrate
from ._settings import Settings
from ._tracing import Tracing
from ._typed import EnqueueOptions, JobRef, P, Performs, Seconds

if TYPE_CHECKING:
    from asyncpg import Connection

    from ._jobs import JobSpec


class App(Core):
    """Owns the pools, the registry and the middleware chains, and wires the features.

    ``settings`` defaults to :meth:`Settings.from_env`; ``registry`` to the one
    ``@job`` fills. ``client_middleware`` wraps every enqueue and
    ``server_middleware`` every execution in a worker, first = outermost. The
    kill switch (:mod:`asyncjobs.flags`) is the outermost of both unless
    ``kill_switch=False``. ``tracing`` (default ``settings.tracing``,
    ``ASYNCJOBS_TRACING``) adds OpenTelemetry spans (:mod:`asyncjobs._tracing`): its
    client middleware goes last, innermost of those given here, and its execution layer
    outermost. ``outbox_relay=True`` runs a relay of transactional enqueues
    (``_connection=``, :mod:`asyncjobs._outbox`) in this process from ``async with app``
    until the App closes; worker processes run one anyway. The pools and the middleware
    lists are :class:`~asyncjobs._core.Core`'s.
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
        tracing: bool | None = None,
        outbox_relay: bool = False,
    ) -> None:
        super().__init__(
            settings if settings is not None else Settings.from_env(),
            registry if registry is not None else default_registry,
        )
        self.reconcilers = reconcilers if reconcilers is not None else default_reconcilers
        if kill_switch:
            self.client_middleware.append(_kill_switch)
            self.server_middleware.append(execution_gate)
        self.client_middleware += client_middleware
        self.server_middleware += server_middleware
        traced = self.settings.tracing if tracing is None else tracing
        self.tracing = Tracing() if traced else None
        """Tracing's spans, or None when off; a ConfigurationError if OpenTelemetry is missing."""
        if self.tracing is not None:
            self.client_middleware.append(self.tracing.client_middleware)
        self.dead = DeadLetters(self)
        """This App's dead letters: ``await app.dead.list()``, ``retry(id)``, ``purge()``."""
        self.outbox_relay = Relay(self) if outbox_relay else None
        """The relay ``outbox_relay=True`` asked for (started by ``async with app``), or None."""

    async def __aenter__(self) -> App:
        if self.outbox_relay is not None:
            self.outbox_relay.start()
        return self

    async def close(self) -> None:
        """Stop the outbox relay if one runs, then close the pools (see :class:`Core`)."""
        if self.outbox_relay is not None:
            await self.outbox_relay.stop()
        await super().close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @overload
    async def enqueue(
        self,
        job: Callable[Concatenate[Any, P], Awaitable[Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: type[Performs[P]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job | None: ...
    @overload
    async def enqueue(self, job: str | JobSpec, /, *args: Any, **kwargs: Any) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _job_id: str, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _queue_name: str, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _defer_until: datetime, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _defer_by: Seconds, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _expires: Seconds, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _job_try: int, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _jitter: Seconds, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _jitter_min: Seconds, **kwargs: Any
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: JobRef, /, *args: Any, _connection: Connection | None, **kwargs: Any
    ) -> Job | None: ...
    async def enqueue(self, job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
        """Enqueue ``job`` (a decorated job or its name) with ``args`` and ``kwargs``.

        Keyword arguments starting with ``_`` are arq's options: ``_job_id``,
        ``_queue_name``, ``_defer_by``, ``_defer_until``, ``_expires``, ``_job_try``.
        Returns arq's :class:`~arq.jobs.Job`, or ``None`` when a client middleware
        rejected the job or a job with the same ``_job_id`` exists. Raises an
        :class:`EnqueueError` subclass for a call that cannot be right (nothing is
        written) and :class:`RedisUnavailableError` when Redis is unreachable. Type
        checkers check ``args`` and ``kwargs`` against a job function's or class's own
        signature when no ``_option`` is given (the overloads above; see
        :mod:`asyncjobs._typed`).

        ``_connection=conn`` (an asyncpg connection in a transaction) writes the job to
        the outbox in that transaction instead; it reaches Redis once it commits
        (:mod:`asyncjobs._outbox`).
        """
        if kwargs.get("_connection") is not None:
            return await _enqueue_in_transaction(self, job, *args, **kwargs)
        return await _enqueue(self, job, *args, **kwargs)

    def with_options(self, **options: Unpack[EnqueueOptions]) -> WithOptions:
        """A handle whose ``enqueue(job, *args, **kwargs)`` enqueues on this App with these
        ``_options``; type checkers check ``args`` and ``kwargs`` against the job."""
        return WithOptions(self, options)

    async def enqueue_many(
        self,
        job: Any,
        items: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        batch_size: int = 1000,
        **options: Unpack[EnqueueOptions],
    ) -> list[Job | None]:
        """Enqueue one ``job`` per item, ``batch_size`` per Redis round trip.

        An item is a tuple of positional arguments, an :class:`~asyncjobs.Args`
        (keyword arguments and per-job ``_options``), or the job's one argument.
        ``options`` (``_defer_by``, ``_jitter`` ...) apply to every job. Returns,
        in input order, each job's :class:`~arq.jobs.Job` or ``None`` (rejected by
        middleware, or a duplicate ``_job_id``). Every result is kept: for millions
        of items use :meth:`enqueue_stream`. See :mod:`asyncjobs._bulk`.
        ``_connection=conn`` writes the batch to the outbox in ``conn``'s transaction.
        """
        return await _enqueue_many(self, job, items, batch_size=batch_size, **options)

    def enqueue_stream(
        self,
        job: Any,
        items: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        batch_size: int = 1000,
        stats: BulkStats | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> AsyncIterator[list[Job | None]]:
        """Like :meth:`enqueue_many`, yielding each batch's results: memory stays bounded.

        ``stats`` (a :class:`~asyncjobs._bulk.BulkStats`) collects the counts if given.
        """
        return _enqueue_stream(self, job, items, batch_size=batch_size, stats=stats, **options)

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
        return await _cancel(self, job_id, reason=reason, actor=actor, queue=queue)

    async def migrate(self) -> list[str]:
        """Apply the runtime's pending schema migrations; returns the names applied."""
        pool = await self.db()
        async with pool.acquire() as conn:
            return await migrate(conn)


_default_app: App | None = None
_built_here = False
"""Whether :func:`get_app` built the default App (rather than :func:`set_app` setting it)."""


def get_app() -> App:
    """The default App, built from the environment on first use.

    Its connections belong to the event loop they were opened on. When that loop has
    closed, or another one runs now (a script that calls ``asyncio.run()`` twice, test
    frameworks that give each test its own loop), a default App this function built is
    built anew; one given to :func:`set_app` is yours to replace."""
    global _default_app, _built_here
    app = _default_app
    if app is None or (_built_here and app.loop_gone()):
        app = _default_app = App()
        _built_here = True
    return app


def set_app(app: App | None) -> App | None:
    """Make ``app`` the default App; returns the previous one (not closed)."""
    global _default_app, _built_here
    previous, _default_app, _built_here = _default_app, app, False
    return previous


def reset_app() -> None:
    """Forget the default App, so the next use builds it anew (for tests)."""
    set_app(None)


@overload
async def enqueue(
    job: Callable[Concatenate[Any, P], Awaitable[Any]], /, *args: P.args, **kwargs: P.kwargs
) -> Job | None: ...
@overload
async def enqueue(job: type[Performs[P]], /, *args: P.args, **kwargs: P.kwargs) -> Job | None: ...
@overload
async def enqueue(job: str | JobSpec, /, *args: Any, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(job: JobRef, /, *args: Any, _job_id: str, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(job: JobRef, /, *args: Any, _queue_name: str, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(
    job: JobRef, /, *args: Any, _defer_until: datetime, **kwargs: Any
) -> Job | None: ...
@overload
async def enqueue(job: JobRef, /, *args: Any, _defer_by: Seconds, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(job: JobRef, /, *args: Any, _expires: Seconds, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(job: JobRef, /, *args: Any, _job_try: int, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(job: JobRef, /, *args: Any, _jitter: Seconds, **kwargs: Any) -> Job | None: ...
@overload
async def enqueue(
    job: JobRef, /, *args: Any, _jitter_min: Seconds, **kwargs: Any
) -> Job | None: ...
@overload
async def enqueue(
    job: JobRef, /, *args: Any, _connection: Connection | None, **kwargs: Any
) -> Job | None: ...
async def enqueue(job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
    """:meth:`App.enqueue` on the default App (its arguments checked as there)."""
    return await get_app().enqueue(job, *args, **kwargs)


class WithOptions:
    """Enqueue with ``_options`` given beforehand, so that type checkers check the job's
    own arguments as well: ``await asyncjobs.with_options(_defer_by=60).enqueue(job, 42)``.

    A call to :func:`enqueue` that passes an ``_option`` has the option's type checked but
    not the job's arguments (a ``ParamSpec`` takes no extra keywords, PEP 612); through
    this handle both are. At run time it is the same :meth:`App.enqueue` call."""

    __slots__ = ("_app", "_options")

    def __init__(self, app: App | None, options: EnqueueOptions) -> None:
        self._app, self._options = app, options

    @overload
    async def enqueue(
        self,
        job: Callable[Concatenate[Any, P], Awaitable[Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Job | None: ...
    @overload
    async def enqueue(
        self, job: type[Performs[P]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job | None: ...
    @overload
    async def enqueue(self, job: str | JobSpec, /, *args: Any, **kwargs: Any) -> Job | None: ...
    async def enqueue(self, job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
        """:meth:`App.enqueue` with these options (given twice: :class:`InvalidOptionError`)."""
        twice = sorted(set(kwargs) & set(self._options))
        if twice:
            raise InvalidOptionError(
                f"{', '.join(twice)} given both to with_options() and to enqueue(): give "
                "each option once"
            )
        app = self._app or get_app()
        return await app.enqueue(job, *args, **kwargs, **self._options)


def with_options(**options: Unpack[EnqueueOptions]) -> WithOptions:
    """A handle whose ``enqueue(job, *args, **kwargs)`` enqueues on the default App with
    these ``_options``; type checkers check ``args`` and ``kwargs`` against the job."""
    return WithOptions(None, options)


async def enqueue_many(
    job: Any,
    items: Iterable[Any] | AsyncIterable[Any],
    /,
    *,
    batch_size: int = 1000,
    **options: Unpack[EnqueueOptions],
) -> list[Job | None]:
    """:meth:`App.enqueue_many` on the default App."""
    return await get_app().enqueue_many(job, items, batch_size=batch_size, **options)


def enqueue_stream(
    job: Any,
    items: Iterable[Any] | AsyncIterable[Any],
    /,
    *,
    batch_size: int = 1000,
    **options: Unpack[EnqueueOptions],
) -> AsyncIterator[list[Job | None]]:
    """:meth:`App.enqueue_stream` on the default App."""
    return get_app().enqueue_stream(job, items, batch_size=batch_size, **options)


async def cancel(
    job_id: str, *, reason: str | None = None, actor: str | None = None, queue: str | None = None
) -> CancelResult:
    """:meth:`App.cancel` on the default App."""
    return await get_app().cancel(job_id, reason=reason, actor=actor, queue=queue)
