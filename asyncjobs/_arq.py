"""What asyncjobs borrows from arq and redis-py beyond their public calls, in one place.

Today: the worker's redis-py retry policy (which overrides redis-py's retry
loop and reads its backoff) and arq's connection settings for a URL. The
claim and finish scripts (:mod:`asyncjobs.claim`) take arq's key prefixes
from ``arq.constants`` rather than repeating them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import logs
from .serializer import deserialize, serialize
from .settings import Settings

_log = structlog.get_logger("asyncjobs.worker")


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


def redis_settings(settings: Settings, retry: RedisRetry | None = None) -> RedisSettings:
    """arq's RedisSettings for ``settings.redis_url``, failing fast at startup."""
    rs = RedisSettings.from_dsn(settings.require_redis_url())
    rs.conn_timeout = max(1, round(settings.redis_timeout))
    rs.conn_retries = 0
    rs.retry = retry
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    return rs


async def worker_redis(settings: Settings, retry: ReconnectingRetry) -> ArqRedis:
    """The worker's Redis client: arq's pool with asyncjobs' JSON and ``retry``."""
    return await create_pool(
        redis_settings(settings, retry),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )
