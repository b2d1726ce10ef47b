"""Transactional enqueue: the job is written in the caller's transaction, a relay moves it.

``await enqueue(job, *args, _connection=conn)``, with ``conn`` an asyncpg connection
inside a transaction, runs the client chain as usual (the kill switch rejects before
anything is written); its innermost step writes one row to ``asyncjobs.outbox`` in
that transaction instead of writing to Redis. Rolled back, the job never existed.
Committed, a ``NOTIFY`` sent in the same transaction wakes a relay, which moves the
row to Redis within milliseconds; a sweep every :data:`SWEEP_S` seconds covers a lost
notification or a relay that was down.

Everything the Redis write needs is decided at enqueue time and kept in the row: the
job id (``_job_id``, or a new random id), the queue, the score (``_defer_by``,
``_defer_until`` and ``_jitter`` count from the enqueue, not the commit), arq's payload
and the uniqueness lock key. The relay's write is ``enqueue()``'s Lua call (arq's rule:
an id whose job or result exists is not written again) plus a mark per job id
(:data:`MARKER_PREFIX`), set in the same call and removed once the rows' delete has
committed. A relay that dies between its Redis write and its delete leaves rows whose
jobs are in Redis; the relay that takes them next finds the marks and only deletes the
rows, even if the jobs ran meanwhile and kept no result (``keep_result`` is 0 by
default): each job is queued once. The job's TTL (``_expires``, or arq's rule) counts
from the relay's write.
Uniqueness (``unique_for``) is checked when the job reaches Redis: a duplicate is then
dropped and logged as ``job.rejected`` (reason ``unique``), as a plain enqueue would be.

Relays claim rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction that
deletes them after the Redis write, so any number run at once without taking each
other's rows. Every worker process runs one (while ``ASYNCJOBS_DATABASE_URL`` is set);
any other process can, with ``App(outbox_relay=True)`` used as ``async with app``.

The relay does not look the job up: it passes the payload through, so a process need
not import every job module to relay it. A row naming a job no worker knows any more
goes to the dead letters when a worker claims it (reason ``unknown_job``, payload
kept), like any payload naming an unknown job. A row Redis refuses (its queue key holds
something other than a sorted set) stays in the outbox, logged ``outbox.refused`` at
every try, and is counted in ``asyncjobs status``: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from . import _logs as logs
from ._arq import (
    EXPIRES_EXTRA_MS,
    JOB_PREFIX,
    REDIS_UNAVAILABLE,
    RESULT_PREFIX,
    ArqRedis,
    Job,
    ResponseError,
)
from ._core import Core, EnqueueRequest
from ._enqueue import (
    NOT_UNIQUE,
    WAKE_QUEUES_LUA,
    WRITTEN,
    Prepared,
    prepare,
    queue_type_check,
    split_options,
    write_job,
)
from ._exceptions import EnqueueError, RedisUnavailableError
from .serializer import deserialize

CHANNEL = "asyncjobs_outbox"
"""The ``LISTEN/NOTIFY`` channel a transactional enqueue notifies at commit."""
SWEEP_S = 2.0
"""How often a relay looks for rows without being notified (lost notifications, rows
left by a relay that died, a Redis that was down)."""
FAILING_SWEEP_S = 60.0
"""The longest a relay waits between two tries while Redis or PostgreSQL is failing."""
BATCH = 1000
"""The most rows one relay transaction moves (one Lua call to Redis)."""

_log = structlog.get_logger("asyncjobs.outbox")

_COLUMNS = "job_id, job_name, queue, score, expires_ms, payload, unique_key, unique_ms"
_INSERT_ONE = (
    f"WITH written AS (INSERT INTO asyncjobs.outbox ({_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)) "
    f"SELECT pg_notify('{CHANNEL}', '')"
)
_INSERT_MANY = (
    f"WITH written AS (INSERT INTO asyncjobs.outbox ({_COLUMNS}) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], "
    "$6::bytea[], $7::text[], $8::bigint[])) "
    f"SELECT pg_notify('{CHANNEL}', '')"
)
_CLAIM = f"SELECT id, {_COLUMNS} FROM asyncjobs.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
_DELETE = "DELETE FROM asyncjobs.outbox WHERE id = ANY($1::bigint[])"

MARKER_PREFIX = "asyncjobs:outbox:"
"""A relay marks each job id it writes (``asyncjobs:outbox:<job id>``) in the same Lua
call, and removes the marks once the rows' delete has committed. A relay that finds a
mark left by one that died in between takes the job for written, even if the job has
run and left no result since (``keep_result`` is 0 by default)."""
MARKER_TTL_MS = EXPIRES_EXTRA_MS
"""How long a mark outlives a relay that died before removing it (a day, arq's
``expires_extra_ms``): longer than PostgreSQL takes to roll back a dead relay's rows."""

RELAY_LUA = (
    """
-- As asyncjobs._enqueue's ENQUEUE_LUA, for rows of the outbox. KEYS per job: its job key,
-- result key, queue, relay mark and uniqueness lock (the mark again if it has none).
-- ARGV[1]: the marks' TTL (ms); then per job: expiry (ms), score, payload, id, lock TTL
-- (ms; 0: no lock). A job whose job, result or mark exists is not written (0); one whose
-- lock is held is not written (2); else it is written with its mark (1).
"""
    + queue_type_check(5)
    + """local out, woken, mark_ms = {}, {}, ARGV[1]
for i = 0, #KEYS / 5 - 1 do
  local k, a = i * 5, i * 5 + 1
  if redis.call('EXISTS', KEYS[k + 1], KEYS[k + 2], KEYS[k + 4]) ~= 0 then
    out[i + 1] = 0
  elseif ARGV[a + 5] ~= '0'
      and not redis.call('SET', KEYS[k + 5], ARGV[a + 4], 'NX', 'PX', ARGV[a + 5]) then
    out[i + 1] = 2
  else
    redis.call('PSETEX', KEYS[k + 1], ARGV[a + 1], ARGV[a + 3])
    redis.call('ZADD', KEYS[k + 3], ARGV[a + 2], ARGV[a + 4])
    redis.call('PSETEX', KEYS[k + 4], mark_ms, '1')
    woken[KEYS[k + 3]] = true
    out[i + 1] = 1
  end
end
"""
    + WAKE_QUEUES_LUA
    + """return out
"""
)


async def write_relayed(app: Core, jobs: list[Prepared]) -> list[int]:
    """Write outbox jobs to Redis in one call: per job WRITTEN, DUPLICATE_ID (its job,
    result or relay mark exists) or NOT_UNIQUE. Raises :class:`RedisUnavailableError`
    when Redis does not answer in time, :class:`EnqueueError` when it refuses the call
    (nothing written)."""
    keys: list[str] = []
    args: list[str | int | bytes] = [MARKER_TTL_MS]
    for job in jobs:
        mark = MARKER_PREFIX + job.job_id
        keys += [JOB_PREFIX + job.job_id, RESULT_PREFIX + job.job_id, job.queue, mark]
        keys.append(job.unique_key or mark)
        args += [job.expires_ms, job.score, job.payload, job.job_id, job.unique_ms]
    script = await app.script(RELAY_LUA)
    try:
        async with asyncio.timeout(app.settings.redis_timeout):
            codes: list[int] = await script(keys=keys, args=args)
    except REDIS_UNAVAILABLE as exc:
        raise RedisUnavailableError(
            f"Redis is unreachable ({type(exc).__name__}: {exc or 'timed out'}); "
            f"{len(jobs)} outbox job(s) stay in the outbox for the next try"
        ) from exc
    except ResponseError as exc:  # the script checks first, so nothing was written
        raise EnqueueError(f"Redis refused the write ({exc})") from exc
    return codes


# -- the enqueue side ---------------------------------------------------------


async def write_rows(conn: Any, jobs: list[Prepared], names: list[str]) -> None:
    """Insert ``jobs`` (of the jobs ``names``, one each) into the outbox on ``conn``, in
    its transaction, and notify the relays at commit. One round trip.

    A PostgreSQL error becomes an :class:`EnqueueError` saying the caller's transaction
    is now aborted (asyncpg's error is its ``__cause__``).
    """
    try:
        if len(jobs) == 1:
            job = jobs[0]
            await conn.execute(
                _INSERT_ONE,
                job.job_id,
                names[0],
                job.queue,
                job.score,
                job.expires_ms,
                job.payload,
                job.unique_key,
                job.unique_ms,
            )
            return
        await conn.execute(
            _INSERT_MANY,
            [j.job_id for j in jobs],
            names,
            [j.queue for j in jobs],
            [j.score for j in jobs],
            [j.expires_ms for j in jobs],
            [j.payload for j in jobs],
            [j.unique_key for j in jobs],
            [j.unique_ms for j in jobs],
        )
    except asyncpg.UndefinedTableError as exc:
        raise EnqueueError(
            "the outbox table asyncjobs.outbox is missing: run `asyncjobs migrate`; "
            "nothing was enqueued and your transaction is aborted"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise EnqueueError(
            f"PostgreSQL refused the outbox write ({type(exc).__name__}: {exc}); nothing "
            "was enqueued and your transaction is aborted"
        ) from exc


async def write_outbox(request: EnqueueRequest) -> Job | None:
    """The innermost step of the client chain for a transactional enqueue: one outbox row.

    Returns arq's Job for the id the job will have in Redis; until the transaction
    commits and the relay has moved it, its status there is ``not_found``. The Job's
    client needs ``ASYNCJOBS_REDIS_URL`` set, not Redis up: it connects on first use.
    A middleware that took ``_connection`` out of the options gets a plain enqueue.
    """
    conn = request.options.get("_connection")
    if conn is None:
        return await write_job(request)
    redis = await request.app.redis()  # a missing Redis URL fails before anything is written
    job = prepare(request)
    name = request.spec.name
    await write_rows(conn, [job], [name])
    _log.debug(logs.OUTBOX_WRITTEN, job=name, job_id=job.job_id, queue=job.queue)
    return Job(job.job_id, redis=redis, _queue_name=job.queue, _deserializer=deserialize)


async def enqueue(app: Core, job: Any, /, *args: Any, **kwargs: Any) -> Job | None:
    """:meth:`asyncjobs.App.enqueue` with ``_connection``: the client chain, then
    :func:`write_outbox` (``_connection`` is checked with the other options)."""
    spec = app.registry.resolve(job)
    job_kwargs, options = split_options(spec, args, kwargs)
    result: Job | None = await app.client_chain(write_outbox)(
        EnqueueRequest(app, spec, args, job_kwargs, options)
    )
    return result


class OutboxWrite:
    """A bulk batch written to the outbox: ``read()`` gives every job as written, as a
    Redis write's reply would (uniqueness is decided later, by the relay)."""

    __slots__ = ("count", "redis")

    def __init__(self, redis: ArqRedis, count: int) -> None:
        self.redis, self.count = redis, count

    def job(self, job: Prepared) -> Job:
        """arq's handle on ``job``, as it will be once the relay has moved it to Redis."""
        return Job(job.job_id, redis=self.redis, _queue_name=job.queue, _deserializer=deserialize)

    async def read(self) -> list[int]:
        """``WRITTEN`` for each job of the batch."""
        return [WRITTEN] * self.count

    async def discard(self) -> None:
        """Nothing to give back: the rows are the transaction's."""


# -- the relay ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backlog:
    """The outbox rows committed and not yet in Redis (``asyncjobs status``)."""

    pending: int
    oldest_age_s: float | None
    """Seconds since the oldest row was written, ``None`` if there is none."""

    def as_dict(self) -> dict[str, Any]:
        """``{"pending": n, "oldest_age_s": s}`` for ``asyncjobs status --json``."""
        return {"pending": self.pending, "oldest_age_s": self.oldest_age_s}


async def backlog(app: Core) -> Backlog | None:
    """How many rows wait in the outbox and how old the oldest is; ``None`` when the
    outbox table does not exist (migration 0007 not applied)."""
    pool = await app.db()
    row = await pool.fetchrow("SELECT to_regclass('asyncjobs.outbox') IS NOT NULL AS present")
    if row is None or not row["present"]:
        return None
    row = await pool.fetchrow(
        "SELECT count(*) AS pending, "
        "extract(epoch FROM clock_timestamp() - min(created_at))::float8 AS age "
        "FROM asyncjobs.outbox"
    )
    assert row is not None
    age = row["age"]
    return Backlog(int(row["pending"]), None if age is None else round(max(age, 0.0), 3))


AfterWrite = Callable[[list[str]], Awaitable[None]]


class Relay:
    """Moves committed outbox rows to Redis: woken by ``NOTIFY``, sweeping every ``sweep``
    seconds. ``await relay.run()`` runs until cancelled; :meth:`start`/:meth:`stop` run it
    as a task. :meth:`drain` moves what is there now and returns the count.

    ``after_write`` (tests only) is awaited with the job ids of a batch between its Redis
    write and its delete, where a relay that dies leaves rows whose jobs are in Redis.
    """

    def __init__(
        self,
        app: Core,
        *,
        sweep: float = SWEEP_S,
        batch: int = BATCH,
        after_write: AfterWrite | None = None,
    ) -> None:
        self.app = app
        self.sweep = sweep
        self.batch = batch
        self._after_write = after_write
        self._wake = asyncio.Event()
        self._listener: Any = None
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._markers: list[str] = []
        self.moved = 0
        """Rows this relay has taken out of the outbox (their jobs written, or already in Redis)."""

    def start(self) -> None:
        """Run the relay as a task of the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="asyncjobs.outbox")

    async def stop(self) -> None:
        """Cancel the task :meth:`start` began and wait for it; rows it held roll back."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Relay until cancelled. Failures (Redis or PostgreSQL down) are logged once per
        outage as ``outbox.relay_failed``; the rows stay, and are tried again after a wait
        that doubles from ``sweep`` up to :data:`FAILING_SWEEP_S` while the outage lasts."""
        try:
            while True:
                if self._listener is None:
                    await self._listen()
                self._wake.clear()
                await self._drain_logged()
                # While failing, look less often (up to once a minute): each try may log.
                wait = min(self.sweep * 2**self._failures, max(self.sweep, FAILING_SWEEP_S))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.terminate()

    async def _drain_logged(self) -> None:
        try:
            await self.drain()
        except Exception as exc:  # Redis or PostgreSQL down, or a bug: the relay goes on
            missing = isinstance(exc, asyncpg.UndefinedTableError)  # not migrated (yet)
            if not self._failures and not missing:  # no rows can exist without the table
                _log.warning(
                    logs.OUTBOX_RELAY_FAILED,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=self.sweep,
                )
            self._failures = min(self._failures + 1, 10)
            return
        self._failures = 0

    async def drain(self) -> int:
        """Move every committed row to Redis, batch by batch; the count moved."""
        moved = 0
        while True:
            count = await self.relay_once()
            moved += count
            if count < self.batch:
                return moved

    async def relay_once(self) -> int:
        """Claim up to ``batch`` rows, write their jobs to Redis, delete the rows, in one
        transaction; the number of rows claimed (rows Redis refuses stay)."""
        pool = await self.app.db()
        self._markers = []
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self.batch)
            if not rows:
                return 0
            done = await self._write(rows)
            if self._after_write is not None:
                await self._after_write([r["job_id"] for r in rows])
            await conn.execute(_DELETE, done)
        self.moved += len(done)
        await self._forget_markers()
        return len(rows)

    async def _forget_markers(self) -> None:
        """The rows are gone for good (committed): their markers are no longer needed.
        Best effort: a marker left behind expires after :data:`MARKER_TTL_MS`."""
        markers, self._markers = self._markers, []
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            redis = await self.app.redis()
            async with asyncio.timeout(self.app.settings.redis_timeout):
                for start in range(0, len(markers), 1000):
                    await redis.unlink(*markers[start : start + 1000])

    async def _write(self, rows: list[Any]) -> list[int]:
        """Write the rows' jobs to Redis in one call; the ids of the rows whose jobs are now
        in Redis (or were already, or were rejected as not unique). One bad row (a queue
        key that is not a sorted set) does not hold the others back: they are then written
        one by one, and the rows Redis refuses stay."""
        try:
            codes = await write_relayed(self.app, [_prepared(r) for r in rows])
        except EnqueueError as exc:
            if len(rows) > 1:
                done: list[int] = []
                for row in rows:
                    done += await self._write([row])
                return done
            _log.error(
                logs.OUTBOX_REFUSED,
                job=rows[0]["job_name"],
                job_id=rows[0]["job_id"],
                queue=rows[0]["queue"],
                error=f"{exc}; the row stays in the outbox",
            )
            return []
        self._count(rows, codes)
        self._markers += [MARKER_PREFIX + r["job_id"] for r in rows]
        return [r["id"] for r in rows]

    def _count(self, rows: list[Any], codes: list[int]) -> None:
        written: Counter[tuple[str, str]] = Counter()
        for row, code in zip(rows, codes, strict=True):
            if code == WRITTEN:
                written[row["job_name"], row["queue"]] += 1
                continue
            reason = "unique" if code == NOT_UNIQUE else "duplicate_id"
            self.app.instruments.job(row["job_name"]).rejected(reason)
            _log.info(logs.JOB_REJECTED, job=row["job_name"], job_id=row["job_id"], reason=reason)
        for (name, queue), count in written.items():
            self.app.instruments.job(name).enqueued(queue, count)
        _log.debug(logs.OUTBOX_RELAYED, rows=len(rows), written=sum(written.values()))

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection (best effort: the sweep covers its absence)."""
        conn: Any = None
        try:
            async with asyncio.timeout(self.app.settings.database_timeout):
                conn = await asyncpg.connect(self.app.settings.require_database_url())
                await conn.add_listener(CHANNEL, self._notified)
            conn.add_termination_listener(self._listener_lost)
        except BaseException as exc:  # cancelled too: never leave it open
            if conn is not None:
                conn.terminate()
            if not isinstance(exc, Exception):
                raise
            return
        self._listener = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    def _listener_lost(self, _conn: Any) -> None:
        self._listener = None
        self._wake.set()  # notifications may have been missed: look now


def _prepared(row: Any) -> Prepared:
    return Prepared(
        row["job_id"],
        row["queue"],
        row["score"],
        row["expires_ms"],
        bytes(row["payload"]),
        row["unique_key"],
        row["unique_ms"],
    )
