"""What the pages read, each part from its one source, and which server could not be read.

Queue numbers and workers come from :func:`asyncjobs._status.read_redis` (as
``asyncjobs status`` and the metrics), flags and dead letters from their stores;
a queue's page of jobs is one ``ZRANGE`` with offsets, one ``MGET`` of those
jobs' payloads and try counts (``arq:retry:<id>``) and the live workers'
registrations (which jobs are running), so a page costs the same with ten jobs
queued or ten million.

:class:`Outages` runs each read; a Redis or PostgreSQL that does not answer
leaves that part ``None`` and is named in the page's banner instead of failing
the page.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from .._arq import JOB_PREFIX, REDIS_UNAVAILABLE, RETRY_PREFIX
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
            said = str(exc) if isinstance(exc, AsyncJobsError) else f"{type(exc).__name__}: {exc}"
            self.down["Redis"] = reason("Redis", said if str(exc) else type(exc).__name__)
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
            self.down["PostgreSQL"] = reason("PostgreSQL", database_problem(exc))
            return None


def reason(server: str, said: str) -> str:
    """Why ``server`` could not be read, for a banner that already says "``server`` is
    unreachable": ``Redis is unreachable (cause). Check ...`` becomes ``cause. Check ...``
    (``cause (at url). Check ...`` when the message names where), with no final period."""
    text = said.strip()
    lead = re.match(rf"{re.escape(server)}(?: at (\S+))? is unreachable\s*", text)
    if lead is not None:
        text, where = text[lead.end() :], lead.group(1)
        cause, rest = _bracketed(text)
        if cause is not None:
            text = cause.rstrip(". ") + (f" (at {where})" if where else "") + ". " + rest
        elif where:
            text = f"at {where}{': ' if text else ''}{text}"
    return text.strip(" :.")


def _bracketed(text: str) -> tuple[str | None, str]:
    """``(cause) rest`` as ``(cause, rest)``; ``(None, text)`` if it does not open a bracket."""
    if not text.startswith("("):
        return None, text
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[1:i], text[i + 1 :].lstrip(" .")
    return None, text


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
    tries: int
    """The try it will run as: the tries claimed so far (``arq:retry:<id>``) plus one."""
    enqueued: datetime | None
    deferred: bool
    running: bool = False
    """Whether a live worker holds it (it stays in its queue while it runs)."""


def _when_ms(ms: Any) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(float(ms) / 1000, UTC)


def describe_args(payload: dict[str, Any]) -> str:
    """A job's arguments as JSON text, as they are stored (the page escapes it)."""
    args = payload.get("a") or []
    kwargs = payload.get("k") or {}
    shown = [json.dumps(a, ensure_ascii=False) for a in args]
    shown += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in kwargs.items()]
    return ", ".join(shown)


async def _payloads_and_tries(
    redis: Any, ids: list[str]
) -> list[tuple[dict[str, Any] | None, int]]:
    """Each job's payload and claimed tries (``arq:retry:<id>``, 0 if none), in one ``MGET``."""
    if not ids:
        return []
    raws = await redis.mget([JOB_PREFIX + i for i in ids] + [RETRY_PREFIX + i for i in ids])
    found = []
    for raw, claimed in zip(raws[: len(ids)], raws[len(ids) :], strict=True):
        payload = _payload(raw)
        text = claimed.decode() if isinstance(claimed, bytes) else str(claimed or "")
        tries = int(text) if text.isdigit() else 0
        if payload is not None and isinstance(payload.get("t"), int):
            tries = max(tries, payload["t"] - 1)  # _job_try=n: its first run counts as try n
        found.append((payload, tries))
    return found


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
    read = await _payloads_and_tries(redis, ids)
    held = {i for w in await registered_workers(redis) for i in w.running} if ids else set()
    now = datetime.now(UTC)
    jobs = []
    for (job_id, (_, score)), (payload, claimed) in zip(
        zip(ids, entries, strict=True), read, strict=True
    ):
        running = job_id in held
        due = datetime.fromtimestamp(score / 1000, UTC)
        jobs.append(
            QueuedJob(
                id=job_id,
                due=due,
                job=None if payload is None else str(payload.get("f")),
                args="" if payload is None else describe_args(payload),
                tries=max(claimed, 1) if running else claimed + 1,
                enqueued=None if payload is None else _when_ms(payload.get("et")),
                deferred=due > now and not running,
                running=running,
            )
        )
    return int(size), jobs


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job a live worker holds."""

    id: str
    job: str | None
    args: str
    tries: int
    """The try it is on: the tries claimed so far (``arq:retry:<id>``, counted at the claim)."""
    worker: WorkerInfo
    started: datetime | None
    """When the worker started it, as of its last heartbeat (``None``: not said)."""


async def running_jobs(app: Core) -> list[RunningJob]:
    """The jobs every live worker holds, by worker (oldest worker first)."""
    redis = await app.redis()
    workers = await registered_workers(redis)
    held = [(w, job_id) for w in workers for job_id in w.running]
    read = await _payloads_and_tries(redis, [i for _, i in held])
    found = []
    for (worker, job_id), (payload, claimed) in zip(held, read, strict=True):
        found.append(
            RunningJob(
                id=job_id,
                job=None if payload is None else str(payload.get("f")),
                args="" if payload is None else describe_args(payload),
                tries=max(claimed, 1),
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
