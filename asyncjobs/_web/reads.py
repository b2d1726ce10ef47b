"""What the pages read, each part from its one source, and which server could not be read.

Queue numbers and workers come from :func:`asyncjobs._status.read_redis` (as
``asyncjobs status`` and the metrics), flags and dead letters from their stores;
a queue's page of jobs is one ``ZRANGE`` with offsets and one ``MGET`` of those
jobs' payloads, so a page costs the same with ten jobs queued or ten million.

:class:`Outages` runs each read; a Redis or PostgreSQL that does not answer
leaves that part ``None`` and is named in the page's banner instead of failing
the page.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from .._arq import JOB_PREFIX, REDIS_UNAVAILABLE
from .._core import Core
from .._exceptions import (
    AsyncJobsError,
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationError,
    RedisUnavailableError,
)
from .._liveness import WorkerInfo, registered_workers
from .._status import DATABASE_ERRORS, database_problem
from ..serializer import deserialize

T = TypeVar("T")

PAGE_SIZE = 50


class Outages:
    """The servers a page could not read, with why, in the order met."""

    def __init__(self, app: Core) -> None:
        self.app = app
        self.down: dict[str, str] = {}

    async def redis(self, make: Callable[[], Awaitable[T]]) -> T | None:
        """``await make()``, or ``None`` if Redis did not answer in time."""
        if "Redis" in self.down:
            return None
        try:
            async with asyncio.timeout(self.app.settings.redis_timeout):
                return await make()
        except (RedisUnavailableError, ConfigurationError, *REDIS_UNAVAILABLE) as exc:
            self.down["Redis"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None

    async def postgres(self, make: Callable[[], Awaitable[T]]) -> T | None:
        """``await make()``, or ``None`` if PostgreSQL is unreachable, unset or not migrated."""
        if "PostgreSQL" in self.down:
            return None
        try:
            async with asyncio.timeout(self.app.settings.database_timeout):
                return await make()
        except DATABASE_ERRORS as exc:
            if isinstance(exc, AsyncJobsError) and not about_database(exc):
                raise
            self.down["PostgreSQL"] = database_problem(exc)
            return None


def about_database(exc: AsyncJobsError) -> bool:
    """Whether ``exc``, raised by a PostgreSQL read, says the server cannot be used (rather
    than, say, that a record does not exist)."""
    return isinstance(exc, DatabaseUnavailableError | ConfigurationError | MigrationError)


async def postgres_action(outages: Outages, make: Callable[[], Awaitable[T]]) -> T:
    """``await make()`` for an action; :class:`ActionNotDone` when the server is not there."""
    done = await outages.postgres(make)
    if done is None and "PostgreSQL" in outages.down:
        raise ActionNotDone("PostgreSQL")
    return done  # type: ignore[return-value]  # None only when make() returned None


async def redis_action(outages: Outages, make: Callable[[], Awaitable[T]]) -> T:
    """``await make()`` for an action; :class:`ActionNotDone` when Redis is not there."""
    done = await outages.redis(make)
    if done is None and "Redis" in outages.down:
        raise ActionNotDone("Redis")
    return done  # type: ignore[return-value]  # None only when make() returned None


class ActionNotDone(Exception):
    """An action could not reach the server it changes (named in the page's banner)."""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """One entry of a queue, with what its payload says (``None`` if the payload is gone)."""

    id: str
    due: datetime
    job: str | None
    args: str
    tries: int | None
    enqueued: datetime | None
    deferred: bool


def _when_ms(ms: Any) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(float(ms) / 1000, UTC)


def describe_args(payload: dict[str, Any]) -> str:
    """A job's arguments as JSON text, as they are stored (the page escapes it)."""
    args = payload.get("a") or []
    kwargs = payload.get("k") or {}
    shown = [json.dumps(a, ensure_ascii=False) for a in args]
    shown += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in kwargs.items()]
    return ", ".join(shown)


def _payload(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        return deserialize(raw)
    except ValueError:  # not JSON: not a job asyncjobs wrote
        return None


async def queue_page(app: Core, queue: str, page: int) -> tuple[int, list[QueuedJob]]:
    """The queue's size and its ``page``-th page (from 1) of jobs, soonest due first."""
    redis = await app.redis()
    start = (page - 1) * PAGE_SIZE
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(queue)
    pipe.zrange(queue, start, start + PAGE_SIZE - 1, withscores=True)
    size, entries = await pipe.execute()
    ids = [(m.decode() if isinstance(m, bytes) else str(m)) for m, _ in entries]
    raws = await redis.mget([JOB_PREFIX + i for i in ids]) if ids else []
    now = datetime.now(UTC)
    jobs = []
    for (job_id, (_, score)), raw in zip(zip(ids, entries, strict=True), raws, strict=True):
        payload = _payload(raw)
        due = datetime.fromtimestamp(score / 1000, UTC)
        jobs.append(
            QueuedJob(
                id=job_id,
                due=due,
                job=None if payload is None else str(payload.get("f")),
                args="" if payload is None else describe_args(payload),
                tries=None if payload is None else payload.get("t"),
                enqueued=None if payload is None else _when_ms(payload.get("et")),
                deferred=due > now,
            )
        )
    return int(size), jobs


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job a live worker holds."""

    id: str
    job: str | None
    args: str
    tries: int | None
    worker: WorkerInfo
    started: datetime | None
    """When the worker started it, as of its last heartbeat (``None``: not said)."""


async def running_jobs(app: Core) -> list[RunningJob]:
    """The jobs every live worker holds, by worker (oldest worker first)."""
    redis = await app.redis()
    workers = await registered_workers(redis)
    held = [(w, job_id) for w in workers for job_id in w.running]
    raws = await redis.mget([JOB_PREFIX + i for _, i in held]) if held else []
    found = []
    for (worker, job_id), raw in zip(held, raws, strict=True):
        payload = _payload(raw)
        found.append(
            RunningJob(
                id=job_id,
                job=None if payload is None else str(payload.get("f")),
                args="" if payload is None else describe_args(payload),
                tries=None if payload is None else payload.get("t"),
                worker=worker,
                started=_when_ms(
                    None
                    if job_id not in worker.running_since
                    else worker.running_since[job_id] * 1000
                ),
            )
        )
    return found


RUN_NOW_LUA = """
-- KEYS[1]: the queue. ARGV[1]: the job id, ARGV[2]: now (ms). Makes a deferred job due now;
-- 1 if it was deferred, 0 if it is due already or not in this queue.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
"""


async def run_now(app: Core, queue: str, job_id: str, now_ms: int) -> bool:
    """Make the deferred job ``job_id`` of ``queue`` due now; whether it was deferred."""
    script = await app.script(RUN_NOW_LUA)
    return bool(await script(keys=[queue], args=[job_id, now_ms]))
