"""Everything asyncjobs knows about arq's and redis-py's insides, in one module.

An arq or redis-py upgrade, or a move off arq, touches this file: no other
module of the package imports ``arq`` or ``redis`` (a test checks), and the
``test_arq_contract.py`` tests (unit and integration) hold what is borrowed
against the real thing:

- arq's key names and its job and result formats (the constants below, from
  ``arq.constants``; :func:`result_record` builds the record arq's ``Job``
  reads);
- arq's public classes asyncjobs hands out or takes (``Job``, ``ArqRedis``,
  ``CronJob``, ``Retry``), re-exported here;
- how arq's command reads ``WorkerSettings`` (:class:`EnvRedisSettings`, and
  the ``on_startup`` hand-over in :mod:`asyncjobs._worker`);
- redis-py's retry loop (:class:`ReconnectingRetry` overrides it and reads its
  backoff) and its raw pooled connections, on which the enqueue sends commands
  packed here in Redis's wire format (:func:`bulk_string`, :class:`RawCommand`);
- redis-py's Sentinel client, for ``redis+sentinel://`` URLs: every client above
  is built on a pool that asks the Sentinels for the master at each new
  connection (:class:`SentinelMasterConnection`, :func:`producer_pool`);
- redis-py's synchronous client, for the worker's keepalive thread
  (:func:`blocking_client`), which must not need the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import (
    abort_jobs_ss,
    default_queue_name,
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.cron import CronJob
from arq.cron import cron as arq_cron
from arq.jobs import Job, JobStatus, serialize_result
from arq.typing import WorkerCoroutine
from arq.utils import ms_to_datetime, timestamp_ms, to_unix_ms
from arq.worker import Function, Retry, func
from redis import Redis as BlockingRedis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as BlockingRetry
from redis.sentinel import Sentinel as BlockingSentinel
from redis.sentinel import SentinelConnectionPool as BlockingSentinelPool

from . import _logs as logs
from ._exceptions import ConfigurationError
from ._redis_url import SentinelURL, parse_sentinel_url
from .serializer import deserialize, serialize

__all__ = [
    "ABORT_SET",
    "DEFAULT_QUEUE",
    "EXPIRES_EXTRA_MS",
    "IN_PROGRESS_PREFIX",
    "JOB_PREFIX",
    "REDIS_UNAVAILABLE",
    "RESULT_PREFIX",
    "RETRY_PREFIX",
    "ArqRedis",
    "AsyncScript",
    "ConnectionPool",
    "CronJob",
    "EnvRedisSettings",
    "Function",
    "Job",
    "JobStatus",
    "NoScriptError",
    "RawCommand",
    "Redis",
    "RedisSettings",
    "ResponseError",
    "Retry",
    "WorkerCoroutine",
    "arq_cron",
    "blocking_client",
    "bulk_string",
    "func",
    "ms_to_datetime",
    "once_client",
    "probe_sentinels",
    "producer_pool",
    "timestamp_ms",
    "to_unix_ms",
]

JOB_PREFIX: str = job_key_prefix
"""``arq:job:<id>``: the job's JSON payload."""
IN_PROGRESS_PREFIX: str = in_progress_key_prefix
"""``arq:in-progress:<id>``: set while a worker runs the job."""
RESULT_PREFIX: str = result_key_prefix
"""``arq:result:<id>``: the job's outcome, while kept."""
RETRY_PREFIX: str = retry_key_prefix
"""``arq:retry:<id>``: how often the job was claimed (its tries)."""
ABORT_SET: str = abort_jobs_ss
"""``arq:abort``: ids of jobs to stop, scored by when that was asked."""
DEFAULT_QUEUE: str = default_queue_name
EXPIRES_EXTRA_MS: int = expires_extra_ms
"""arq's default: a job not started within a day of its run time expires."""
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
"""What redis-py (and the socket under it) raise when Redis cannot be reached in time."""

_log = structlog.get_logger("asyncjobs.worker")


def result_record(
    *,
    job_id: str,
    function: str,
    args: Any,
    kwargs: dict[str, Any],
    job_try: int,
    enqueue_ms: int,
    success: bool,
    result: Any,
    start_ms: int,
    queue: str,
) -> bytes:
    """A job's outcome in arq's result format (JSON), for ``arq:result:<id>``."""
    return (
        serialize_result(
            function,
            tuple(args),
            kwargs,
            job_try,
            enqueue_ms,
            success,
            result,
            start_ms,
            timestamp_ms(),
            f"{job_id}:{function}",
            queue,
            job_id,
            serializer=serialize,
        )
        or b""
    )


def bulk_string(value: bytes) -> bytes:
    """``value`` as one RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class RawCommand:
    """A command packed by us, sent on a connection taken from ``redis``'s pool, its
    reply read later (so a bulk enqueue prepares its next batch meanwhile).

    The connection is given back by :meth:`read` or :meth:`discard`; redis-py has
    disconnected it already if sending or reading failed.
    """

    __slots__ = ("command", "conn", "redis")

    def __init__(self, redis: Redis, conn: Any, command: bytes) -> None:
        self.redis, self.conn, self.command = redis, conn, command

    @classmethod
    async def send(cls, redis: Redis, command: bytes) -> RawCommand:
        """Take a pooled connection and send ``command`` on it."""
        pool = redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(command)
        except BaseException:
            await pool.release(conn)
            raise
        return cls(redis, conn, command)

    async def reply(self) -> Any:
        """Read the reply (the connection stays taken: :meth:`resend` or :meth:`release`)."""
        return await self.conn.read_response()

    async def resend(self) -> None:
        """Send the same command again on the same connection (after NOSCRIPT)."""
        await self.conn.send_packed_command(self.command)

    async def release(self) -> None:
        """Give the connection back to the pool."""
        await self.redis.connection_pool.release(self.conn)

    async def discard(self) -> None:
        """Close the connection (its unread reply must not reach its next user), give it back."""
        await self.conn.disconnect(nowait=True)
        await self.redis.connection_pool.release(self.conn)


def pack_command(*args: Any) -> bytes:
    """redis-py's own packing of a command, for comparing ours against (tests)."""
    from redis.asyncio.connection import Connection

    return b"".join(Connection().pack_command(*args))


class ReconnectingRetry(RedisRetry):
    """redis-py retry policy for the worker's connections.

    Fails fast until the first command succeeds (so a worker pointed at nothing
    exits at once with a clear error), then retries connection errors forever
    with capped exponential backoff, so the worker rides out a Redis restart and
    resumes by itself. It stops retrying once the worker's main task has ended,
    so shutting down during an outage does not hang. One instance is shared by
    every connection of the pool (redis-py deep-copies retry objects).
    """

    def __init__(self) -> None:
        super().__init__(
            ExponentialBackoff(cap=1.0, base=0.05),
            -1,
            (RedisConnectionError, RedisTimeoutError),
        )
        # Also the OS-level errors a dropped socket raises before redis-py wraps them.
        self._retry_on = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
        self.connected = False
        self.outage_since: float | None = None
        self.main_task: asyncio.Task[Any] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> ReconnectingRetry:
        return self

    async def call_with_retry(self, do: Callable[[], Awaitable[Any]], fail: Any) -> Any:
        failures = 0
        while True:
            try:
                result = await do()
            except self._retry_on as error:
                await fail(error)
                stopping = self.main_task is not None and self.main_task.done()
                if not self.connected or stopping:
                    raise
                failures += 1
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    _log.warning(logs.REDIS_UNAVAILABLE, error=str(error), retrying=True)
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            self.connected = True
            if self.outage_since is not None:
                down_for = time.monotonic() - self.outage_since
                self.outage_since = None
                _log.info(logs.REDIS_RECONNECTED, down_s=round(down_for, 3))
            return result


class EnvRedisSettings(RedisSettings):
    """arq's ``RedisSettings``, made by ``resolve()`` when arq first reads one of its fields.

    ``WorkerSettings.redis_settings`` is one: arq's command reads it when the worker
    starts, with the environment of that moment; importing asyncjobs, or ``vars()`` /
    ``help()`` on the class, reads nothing.
    """

    def __init__(self, resolve: Callable[[], RedisSettings]) -> None:
        object.__setattr__(self, "_resolve", resolve)
        object.__setattr__(self, "_resolved", None)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        resolved = object.__getattribute__(self, "_resolved")
        if resolved is None:
            resolved = object.__getattribute__(self, "_resolve")()
            object.__setattr__(self, "_resolved", resolved)
        return getattr(resolved, name)

    def __repr__(self) -> str:
        return "<RedisSettings from ASYNCJOBS_REDIS_URL, read when the worker starts>"


class RedisConfig(Protocol):
    """What the worker's Redis clients are made from (:class:`asyncjobs.Settings` is one)."""

    @property
    def redis_timeout(self) -> float: ...

    @property
    def queue_name(self) -> str: ...

    def require_redis_url(self) -> str: ...


def redis_settings(settings: RedisConfig, retry: RedisRetry | None = None) -> RedisSettings:
    """arq's RedisSettings for ``settings.redis_url``, failing fast at startup.

    For a Sentinel URL, arq's own Sentinel mode: it serves arq's ``Worker`` for its
    start and stop only (arq drops the retry settings there); the worker's loop runs
    on :func:`worker_redis`'s client.
    """
    url = settings.require_redis_url()
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        rs = RedisSettings.from_dsn(url)
    else:
        rs = RedisSettings(
            host=list(sentinel.sentinels),
            sentinel=True,
            sentinel_master=sentinel.service,
            database=sentinel.db,
            username=sentinel.username,
            password=sentinel.password,
        )
    rs.conn_timeout = max(1, round(settings.redis_timeout))
    rs.conn_retries = 0
    rs.retry = retry
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    return rs


def producer_pool(url: str, connect_timeout: float) -> ConnectionPool:
    """The connection pool for ``url`` whose connects give up after ``connect_timeout``
    seconds: a plain pool, or, for a Sentinel URL, one that asks the Sentinels."""
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return ConnectionPool.from_url(url, socket_connect_timeout=connect_timeout)
    return SentinelPool(sentinel, connect_timeout)


def once_client(settings: RedisConfig) -> Redis:
    """A client whose commands are sent once, never again after a lost reply (redis-py's
    default): for calls that must not run twice, such as a claim."""
    timeout = max(1.0, settings.redis_timeout)
    return Redis(connection_pool=producer_pool(settings.require_redis_url(), timeout))


def blocking_client(settings: RedisConfig) -> BlockingRedis:
    """A synchronous client for ``settings.redis_url``, used from a thread of its own.

    Its sockets give up after ``ASYNCJOBS_REDIS_TIMEOUT`` seconds (1 at least), so a
    call never hangs; a command that meets a dropped connection is sent once more on
    a new one (only idempotent commands go through it). For a Sentinel URL it is
    redis-py's own Sentinel client for the master: each new connection asks the
    Sentinels where the master is, so after a failover it follows the new one.
    """
    url = settings.require_redis_url()
    timeout = max(1.0, settings.redis_timeout)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": BlockingRetry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
    }
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return BlockingRedis.from_url(url, **options)
    bound = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    sentinels = BlockingSentinel(list(sentinel.sentinels), sentinel_kwargs=bound)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    return sentinels.master_for(  # type: ignore[no-any-return, no-untyped-call]  # redis-py leaves it untyped
        sentinel.service,
        connection_pool_class=_ClosingSentinelPool,
        db=sentinel.db,
        username=sentinel.username,
        password=sentinel.password,
        **options,
    )


class _ClosingSentinelPool(BlockingSentinelPool):
    """redis-py's synchronous Sentinel pool, whose closing also closes the Sentinels'
    connections (as :class:`SentinelPool` does for the asynchronous one)."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:  # closing (a new master disconnects the idle ones only)
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.connection_pool.disconnect()


async def worker_redis(settings: RedisConfig, retry: ReconnectingRetry) -> ArqRedis:
    """The worker's Redis client: arq's pool with asyncjobs' JSON and ``retry``.

    For a Sentinel URL, a pool of :class:`SentinelMasterConnection` carrying
    ``retry`` (arq's Sentinel mode would drop it): each reconnect asks the Sentinels.
    """
    sentinel = parse_sentinel_url(settings.require_redis_url())
    if sentinel is None:
        return await create_pool(
            redis_settings(settings, retry),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=settings.queue_name,
        )
    pool = SentinelPool(
        sentinel,
        max(1.0, settings.redis_timeout),
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
    )
    redis = ArqRedis(
        pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )
    try:
        await redis.ping()  # fails fast: ``retry`` retries only once connected
    except BaseException:
        await redis.aclose(close_connection_pool=True)
        raise
    return redis


# -- Redis Sentinel ----------------------------------------------------------

_ONE_TRY = RedisRetry(NoBackoff(), 0)


class SentinelMasterConnection(SentinelManagedConnection):
    """A connection to the master the Sentinels name, asked again at every attempt.

    Each attempt to connect asks the Sentinels for the master's address and dials it
    once; the connection's retry policy repeats whole attempts (for the worker,
    :class:`ReconnectingRetry`: until Redis is back, as with a plain URL). redis-py's
    own Sentinel connection runs ``Connection.connect`` inside its attempts, which
    retries with that same policy: endlessly, at the dead master's address, never
    asking the Sentinels again. A write refused as READONLY (a demoted master)
    disconnects, as in redis-py's.
    """

    async def connect(self) -> None:
        if self.is_connected:
            return
        await self.retry.call_with_retry(self._connect_once, _no_cleanup)

    async def _connect_once(self) -> None:
        self.host, self.port = await self.connection_pool.get_master_address()
        retry, self.retry = self.retry, _ONE_TRY
        try:
            await Connection.connect(self)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        finally:
            self.retry = retry


async def _no_cleanup(error: BaseException) -> None:
    """A failed connect leaves nothing to undo (redis-py disconnected it)."""


class Sentinels(Sentinel):
    """redis-py's Sentinel client, whose error says what is wrong: no Sentinel answered,
    none knows the service, or its master is down (a failover under way)."""

    def __init__(self, address: SentinelURL, timeout: float) -> None:
        bound = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        super().__init__(list(address.sentinels), sentinel_kwargs=bound)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        self.address = address

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[BaseException] = []
        known = False
        for i, sentinel in enumerate(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            except (*REDIS_UNAVAILABLE, ResponseError) as exc:  # down, or no Sentinel
                errors.append(exc)
                continue
            state = masters.get(service_name)
            known = known or state is not None
            if state and self.check_master_state(state, service_name):
                # As redis-py: the Sentinel that answered is asked first next time.
                self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]
                return str(state["ip"]), int(state["port"])
        raise MasterNotFoundError(_no_master(self.address, errors, known))


class SentinelPool(SentinelConnectionPool):
    """The master's connections, found through ``address``'s Sentinels; connects give up
    after ``connect_timeout`` seconds. Closing the pool closes the Sentinels' connections."""

    def __init__(self, address: SentinelURL, connect_timeout: float, **kwargs: Any) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            address.service,
            Sentinels(address, connect_timeout),
            connection_class=SentinelMasterConnection,
            db=address.db,
            username=address.username,
            password=address.password,
            socket_connect_timeout=connect_timeout,
            **kwargs,
        )

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # closing (a new master disconnects the idle ones only)
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


def _no_master(address: SentinelURL, errors: list[BaseException], known: bool) -> str:
    hosts, service = address.hosts(), address.service
    if len(errors) == len(address.sentinels) and any(isinstance(e, ResponseError) for e in errors):
        return (
            f"the server at {hosts} answered but is not a Redis Sentinel (it refused SENTINEL "
            "MASTERS); a redis+sentinel:// URL in ASYNCJOBS_REDIS_URL lists the Sentinels "
            "(port 26379 by default), not Redis itself: for one Redis server use "
            "redis://host:port/db"
        )
    if len(errors) == len(address.sentinels):
        first = errors[0]
        return (
            f"no Redis Sentinel answered at {hosts} ({type(first).__name__}: {first}); "
            "check the Sentinels' hosts and ports in ASYNCJOBS_REDIS_URL and that they run"
        )
    if not known:
        return (
            f"the Redis Sentinels at {hosts} monitor no service named {service!r}; fix the "
            "service name in ASYNCJOBS_REDIS_URL (SENTINEL MASTERS on a Sentinel lists them)"
        )
    return (
        f"the Redis Sentinels at {hosts} see the master of {service!r} down "
        "(a failover may be under way)"
    )


def probe_sentinels(address: SentinelURL, timeout: float) -> tuple[str, int]:
    """The master's address, asked of ``address``'s Sentinels without an event loop (a
    worker's start), or a :class:`ConfigurationError` saying what to fix."""
    errors: list[BaseException] = []
    known = False
    for host, port in address.sentinels:
        client = BlockingRedis(host, port, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            masters = client.sentinel_masters()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except (*REDIS_UNAVAILABLE, ResponseError) as exc:  # down, or no Sentinel
            errors.append(exc)
            continue
        finally:
            client.close()
        state = masters.get(address.service)
        known = known or state is not None
        if state and state["is_master"] and not (state["is_sdown"] or state["is_odown"]):
            return str(state["ip"]), int(state["port"])
    said = _no_master(address, errors, known)
    raise ConfigurationError(said[0].upper() + said[1:] + ".")
