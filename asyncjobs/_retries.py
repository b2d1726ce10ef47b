"""Retries that end somewhere: backoff with jitter, then a dead letter in PostgreSQL.

Any exception a job raises (and a timeout) is retried, up to the job's
``max_tries`` (default 25, as Sidekiq), after a delay from its ``backoff``
policy. After the last try, or at once for an exception in ``give_up_on`` (or
one outside ``retry_on``), the worker writes a dead-letter record and logs
``job.dead``. Dead letters live in PostgreSQL, so a Redis flush keeps them;
an operator lists, shows, retries or purges them (``asyncjobs dead ...`` or the
functions of :class:`DeadLetters`).

The default policy, :class:`Backoff` ``(base=15, factor=2, cap=6 h, jitter=0.5)``:
try *n* failed → wait a random time in ``[d/2, d]`` with
``d = min(6 h, 15 s × 2^(n-1))``: about 11 s, 22 s, 45 s, 1.5 min, 3 min, 6 min,
12 min, 24 min, 48 min, 1.6 h, 3.2 h, then 4.5 h on average (3-6 h) per try;
25 tries span about three days.
"""

from __future__ import annotations

import builtins
import json
import re
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from ._arq import EXPIRES_EXTRA_MS, Job, timestamp_ms
from ._core import Core
from ._enqueue import WRITTEN, Prepared, enqueue, write_prepared
from ._exceptions import AsyncJobsError
from ._naming import new_job_id
from .serializer import deserialize

_log = structlog.get_logger("asyncjobs.retries")

DEAD_RETRY_PREFIX = "dead:"
"""Job ids of dead letters being retried start with ``dead:<id>:``, so the worker
can remove the record when the retried job succeeds without any lookup."""

FIRST_FAILURE_KEY = "asyncjobs:first-failure:"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that ran out of tries."""

    id: int
    job_name: str
    job_id: str
    queue: str
    args: builtins.list[Any] | None
    kwargs: dict[str, Any] | None
    redacted: bool
    tries: int
    error: str
    traceback: str = field(repr=False)  # `asyncjobs dead show ID` prints it
    first_failed_at: datetime
    last_failed_at: datetime
    reason: str = "failed"
    """``failed`` (out of tries, or given up on), ``tries_exhausted`` (claimed more often
    than ``max_tries``, e.g. by crashing its workers), or, for a payload the worker could
    not run at all, ``unknown_job``, ``bad_payload`` or ``bad_arguments``."""
    payload: bytes | None = field(default=None, repr=False)
    """The job's payload as it was in Redis, for ``unknown_job`` and ``bad_payload``."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LONGEST_S = 36500 * 86400


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"15m"``, ``"45s"``, ``"2w"`` → timedelta; else a clear error."""
    match = _DURATION.match(text)
    if not match:
        raise AsyncJobsError(
            f"{text!r} is not a duration: use a number and a unit, e.g. 30d, 12h, 15m, 45s or 2w"
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds > _LONGEST_S:
        raise AsyncJobsError(f"{text!r} is too long a duration: at most 100 years (36500d)")
    return timedelta(seconds=seconds)


_COLUMNS = (
    "id, job_name, job_id, queue, args, kwargs, redacted, tries, error, traceback, "
    "first_failed_at, last_failed_at, reason, payload"
)


def _row(record: Any) -> DeadLetter:
    data = dict(record)
    data["args"] = json.loads(data["args"]) if data["args"] is not None else None
    data["kwargs"] = json.loads(data["kwargs"]) if data["kwargs"] is not None else None
    return DeadLetter(**data)


class DeadLetters:
    """The dead-letter store of one App (``app.dead``)."""

    def __init__(self, app: Core) -> None:
        self._app = app

    async def record(
        self,
        *,
        job_name: str,
        job_id: str,
        queue: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        redact: bool,
        tries: int,
        exc: BaseException,
        first_failed_at: datetime | None,
    ) -> int:
        """Write (or, for a retried dead letter, update) the record; returns its id."""
        return await self._write(
            job_name=job_name,
            job_id=job_id,
            queue=queue,
            args=None if redact else json.dumps(list(args), default=repr),
            kwargs=None if redact else json.dumps(kwargs, default=repr),
            redacted=redact,
            tries=tries,
            error=f"{type(exc).__name__}: {exc}",
            trace="".join(traceback.format_exception(exc)),
            first_failed_at=first_failed_at,
        )

    async def counts(self) -> dict[str, int]:
        """How many dead letters each job has, by job name (jobs with none are absent)."""
        pool = await self._app.db()
        rows = await pool.fetch(
            "SELECT job_name, count(*) AS count FROM asyncjobs.dead_letters "
            "GROUP BY job_name ORDER BY job_name"
        )
        return {row["job_name"]: int(row["count"]) for row in rows}

    async def record_unrunnable(
        self,
        *,
        reason: str,
        job_name: str,
        job_id: str,
        queue: str,
        payload: bytes,
        args: Any,
        kwargs: Any,
        tries: int,
        error: str,
    ) -> int:
        """Keep a job the worker cannot run (``reason``: ``unknown_job``, ``bad_payload``,
        ``bad_arguments`` or ``tries_exhausted``) with its raw payload; returns its id."""
        return await self._write(
            job_name=job_name,
            job_id=job_id,
            queue=queue,
            args=None if args is None else json.dumps(args, default=repr),
            kwargs=None if kwargs is None else json.dumps(kwargs, default=repr),
            tries=tries,
            error=error,
            reason=reason,
            payload=payload,
        )

    async def _write(
        self,
        *,
        job_name: str,
        job_id: str,
        queue: str,
        args: str | None,
        kwargs: str | None,
        tries: int,
        error: str,
        redacted: bool = False,
        trace: str | None = None,
        first_failed_at: datetime | None = None,
        reason: str | None = None,
        payload: bytes | None = None,
    ) -> int:
        """Insert a dead letter, or for a retried one (``dead:<id>:...``) add to its record:
        the tries, the last error and its traceback or reason where given."""
        pool = await self._app.db()
        retried = retried_dead_letter(job_id)
        if retried is not None:
            found = await pool.fetchval(
                "UPDATE asyncjobs.dead_letters SET tries = tries + $2, error = $3, "
                "traceback = coalesce($4, traceback), last_failed_at = now(), job_id = $5, "
                "reason = coalesce($6, reason) WHERE id = $1 RETURNING id",
                retried,
                tries,
                error,
                trace,
                job_id,
                reason,
            )
            if found is not None:
                return int(found)
        new_id = await pool.fetchval(
            "INSERT INTO asyncjobs.dead_letters (job_name, job_id, queue, args, kwargs, "
            "redacted, tries, error, traceback, first_failed_at, reason, payload) "
            "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8, coalesce($9, ''), "
            "coalesce($10, now()), coalesce($11, 'failed'), $12) RETURNING id",
            job_name,
            job_id,
            queue,
            args,
            kwargs,
            redacted,
            tries,
            error,
            trace,
            first_failed_at,
            reason,
            payload,
        )
        return int(new_id)

    async def list(
        self, job: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> builtins.list[DeadLetter]:
        """Dead letters, newest first, from the ``offset``-th; of one job if ``job`` is given."""
        pool = await self._app.db()
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM asyncjobs.dead_letters "
            "WHERE $1::text IS NULL OR job_name = $1 ORDER BY last_failed_at DESC, id DESC "
            "LIMIT $2 OFFSET $3",
            job,
            limit,
            offset,
        )
        return [_row(r) for r in rows]

    async def get(self, dead_id: int) -> DeadLetter:
        """One dead letter, or :class:`AsyncJobsError` if there is no such id."""
        pool = await self._app.db()
        row = await pool.fetchrow(
            f"SELECT {_COLUMNS} FROM asyncjobs.dead_letters WHERE id = $1", dead_id
        )
        if row is None:
            raise AsyncJobsError(
                f"no dead letter with id {dead_id}; `asyncjobs dead list` lists them"
            )
        return _row(row)

    async def retry(self, dead_id: int) -> Job | None:
        """Enqueue the job again through ``enqueue()`` (kill switch and uniqueness apply).

        The record stays until the retried job succeeds (then the worker removes
        it) and is updated if it fails for good again. A redacted record cannot be
        retried: its arguments were not kept. Returns the Job, or ``None`` if the
        enqueue was rejected.
        """
        letter = await self.get(dead_id)
        if letter.reason == "bad_payload":
            raise AsyncJobsError(
                f"dead letter {dead_id} holds a payload that is not a job asyncjobs can run "
                f"({letter.error}); it cannot be retried, only purged"
            )
        job_id = f"{DEAD_RETRY_PREFIX}{dead_id}:{_new_suffix()}"
        if letter.job_name not in self._app.registry and letter.payload is not None:
            # A job this process does not know (the worker that does may): the payload
            # goes back to its queue as it was, for a worker that knows the job.
            return await _write_raw(self._app, letter, job_id)
        if letter.redacted:
            raise AsyncJobsError(
                f"dead letter {dead_id} was redacted (its arguments were not kept); "
                "it cannot be retried, only purged"
            )
        return await enqueue(
            self._app,
            letter.job_name,
            *(letter.args or []),
            **(letter.kwargs or {}),
            _job_id=job_id,
            _queue_name=letter.queue,
        )

    async def retry_all(self, job: str | None = None) -> builtins.list[tuple[int, Job | None]]:
        """:meth:`retry` every retryable dead letter (of one job if given)."""
        done = []
        for letter in await self.list(job, limit=1_000_000):
            if not letter.redacted:
                done.append((letter.id, await self.retry(letter.id)))
        return done

    async def matching(
        self, older_than: timedelta | None = None, *, job: str | None = None
    ) -> builtins.list[DeadLetter]:
        """The dead letters :meth:`purge` would delete, newest first."""
        pool = await self._app.db()
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM asyncjobs.dead_letters WHERE ($1::interval IS NULL "
            "OR last_failed_at < now() - $1::interval) AND ($2::text IS NULL OR job_name = $2) "
            "ORDER BY last_failed_at DESC, id DESC",
            older_than,
            job,
        )
        return [_row(r) for r in rows]

    async def purge(
        self,
        older_than: timedelta | None = None,
        *,
        job: str | None = None,
        ids: builtins.list[int] | None = None,
    ) -> int:
        """Delete dead letters (last failed more than ``older_than`` ago, of ``job``, and
        among ``ids``, each if given); the count."""
        pool = await self._app.db()
        result = await pool.execute(
            "DELETE FROM asyncjobs.dead_letters WHERE ($1::interval IS NULL "
            "OR last_failed_at < now() - $1::interval) AND ($2::text IS NULL OR job_name = $2) "
            "AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))",
            older_than,
            job,
            ids,
        )
        return int(result.split()[-1])

    async def remove(self, dead_id: int) -> None:
        """Delete one record (the worker does this when a retried dead letter succeeds)."""
        pool = await self._app.db()
        await pool.execute("DELETE FROM asyncjobs.dead_letters WHERE id = $1", dead_id)


def retried_dead_letter(job_id: str | None) -> int | None:
    """The dead letter id a retried job's id names, or ``None``."""
    if not job_id or not job_id.startswith(DEAD_RETRY_PREFIX):
        return None
    head = job_id[len(DEAD_RETRY_PREFIX) :].split(":", 1)[0]
    return int(head) if head.isdigit() else None


async def _write_raw(app: Core, letter: DeadLetter, job_id: str) -> Job | None:
    """Put a dead letter's payload back in its queue, unchanged, under ``job_id``."""
    assert letter.payload is not None
    job = Prepared(job_id, letter.queue, timestamp_ms(), EXPIRES_EXTRA_MS, letter.payload, None, 0)
    (code,) = await write_prepared(app, [job], f"dead letter {letter.id} was not")
    if code != WRITTEN:
        return None
    return Job(job_id, redis=await app.redis(), _queue_name=letter.queue, _deserializer=deserialize)


def _new_suffix() -> str:
    return new_job_id()
