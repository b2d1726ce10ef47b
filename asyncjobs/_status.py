"""What an operator (``asyncjobs status``) or a metrics scrape sees: queues, workers, the rest.

:func:`queue_stats` reads the workers' registrations, then every queue's
numbers in one atomic, read-only script call (three round trips in all,
whatever the queues hold): ``ZCOUNT`` for the ready and deferred jobs, a
``ZSCORE`` per job the live workers hold for the running ones, and the first
few due entries of a queue for the oldest ready job. Its cost grows with the
running jobs, never with the queued ones, so a Prometheus exporter can call
it at every scrape. :func:`snapshot` adds what PostgreSQL knows (dead
letters per job, stopped jobs, paused queues and throttles, the reconcilers'
state); without PostgreSQL
the Redis part still comes back, with ``database_error`` saying why the rest
is missing.

As in arq, a running job stays in its queue until it finishes: ``ready``
counts the due jobs no live worker holds, so a busy worker does not look
like a backlog. Every ``as_dict()`` gives the JSON record documented in the
README ("JSON output"): stable keys, datetimes as ISO 8601 strings in UTC.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from ._arq import REDIS_UNAVAILABLE, timestamp_ms
from ._core import Core
from ._exceptions import AsyncJobsError, RedisUnavailableError
from ._liveness import WorkerInfo, registered_workers, worker_jobs_key
from ._naming import job_of_flag
from ._outbox import Backlog, backlog
from ._retries import DeadLetters
from ._rules import ALL_JOBS, takes

if TYPE_CHECKING:
    from ._app import App
    from ._controls import Control
    from ._flags import Flag, FlagEvent
    from ._jobs import JobSpec
    from ._reconcilers import Reconciler
    from ._retries import DeadLetter
    from ._rules import Rule

"""A flag named ``disable_<job>`` stops ``<job>`` while it is on."""

STATS_LUA = """
-- Read-only. KEYS: the live workers' sets of held job ids (ARGV[2] of them), then the
-- queues. ARGV[1]: now (ms). Reply: each worker's count of held jobs, then per queue:
-- ready (due, not held), deferred (not due, not held), running (held), and the score
-- of the oldest ready job (nil if none).
-- Redis is given the caller's string for now, compared with as a number here.
local now_s, now, nworkers = ARGV[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local out, held, unplaced = {}, {}, {}
for w = 1, nworkers do
  local ids = redis.call('SMEMBERS', KEYS[w])
  out[#out + 1] = #ids
  for _, id in ipairs(ids) do
    held[id] = true
    unplaced[id] = true
  end
end
for q = nworkers + 1, #KEYS do
  local queue = KEYS[q]
  local due = redis.call('ZCOUNT', queue, '-inf', now_s)
  local later = redis.call('ZCOUNT', queue, '(' .. now_s, '+inf')
  local running, running_due = 0, 0
  for id in pairs(unplaced) do
    local score = redis.call('ZSCORE', queue, id)
    if score then
      unplaced[id] = nil  -- a job waits in one queue: look for it in no other
      running = running + 1
      if tonumber(score) <= now then running_due = running_due + 1 end
    end
  end
  -- Of the first running_due + 1 due entries, at least one is not held.
  local oldest = false
  if due > running_due then
    local page = redis.call('ZRANGEBYSCORE', queue, '-inf', now_s, 'WITHSCORES', 'LIMIT', 0,
      running_due + 1)
    for i = 1, #page, 2 do
      if not held[page[i]] then
        oldest = page[i + 1]
        break
      end
    end
  end
  out[#out + 1] = due - running_due
  out[#out + 1] = later - (running - running_due)
  out[#out + 1] = running
  out[#out + 1] = oldest
end
return out
"""


def iso(moment: datetime) -> str:
    """``moment`` as an ISO 8601 string, in UTC."""
    return moment.astimezone(UTC).isoformat()


def dumps(document: Mapping[str, Any]) -> str:
    """One JSON document, as the ``--json`` options print it."""
    return json.dumps(document, indent=2, ensure_ascii=False)


def _stopped(flag: str, states: Mapping[str, bool] | None) -> bool | None:
    return None if states is None else bool(states.get(flag))


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's numbers at one moment."""

    name: str
    ready: int
    """Due jobs that no live worker holds: waiting for a free slot."""
    deferred: int
    """Jobs not due yet: deferred, or waiting to be retried."""
    running: int
    """Jobs a live worker holds (claimed and not finished)."""
    oldest_ready_age: float | None
    """Seconds since the oldest ready job became due; ``None`` when none is ready."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: ``name``, ``ready``, ``deferred``, ``running``,
        ``oldest_ready_age_s``."""
        return {
            "name": self.name,
            "ready": self.ready,
            "deferred": self.deferred,
            "running": self.running,
            "oldest_ready_age_s": self.oldest_ready_age,
        }


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A live worker: its registration, and how many jobs it holds now."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    max_jobs: int
    running: int
    started: datetime
    heartbeat: datetime
    """When it last renewed its registration."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: ``id``, ``host``, ``pid``, ``queues``, ``max_jobs``, ``running``,
        ``started``, ``heartbeat``."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": list(self.queues),
            "max_jobs": self.max_jobs,
            "running": self.running,
            "started": iso(self.started),
            "heartbeat": iso(self.heartbeat),
        }


@dataclass(frozen=True, slots=True)
class StoppedJob:
    """A job whose ``disable_<job>`` flag is on."""

    job: str
    flag: str
    stopped_at: datetime
    stopped_by: str
    reason: str | None
    until: datetime | None = None
    """When a timed stop ends by itself; ``None``: when someone enables the job."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: ``job``, ``flag``, ``stopped_at``, ``stopped_by``, ``reason``,
        ``until`` (``null``: no end)."""
        return {
            "job": self.job,
            "flag": self.flag,
            "stopped_at": iso(self.stopped_at),
            "stopped_by": self.stopped_by,
            "reason": self.reason,
            "until": None if self.until is None else iso(self.until),
        }


@dataclass(frozen=True, slots=True)
class ReconcilerState:
    """A reconciler, and whether its flag stops it (``None``: the flags could not be read)."""

    name: str
    job: str
    schedule: str
    flag: str
    stopped: bool | None

    @classmethod
    def of(cls, rec: Reconciler, states: Mapping[str, bool] | None) -> ReconcilerState:
        """``rec``'s state; ``states`` maps flag names to whether they are on."""
        return cls(
            rec.name, rec.job_name, rec.describe_schedule(), rec.flag, _stopped(rec.flag, states)
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: ``name``, ``job``, ``schedule``, ``flag``, ``stopped``."""
        return {
            "name": self.name,
            "job": self.job,
            "schedule": self.schedule,
            "flag": self.flag,
            "stopped": self.stopped,
        }


@dataclass(frozen=True, slots=True)
class Status:
    """Everything ``asyncjobs status`` shows, read at ``at``.

    The PostgreSQL parts (``dead_letters``, ``stopped_jobs``, the reconcilers'
    ``stopped``) are ``None`` when PostgreSQL could not be read;
    ``database_error`` then says why.
    """

    at: datetime
    queues: tuple[QueueStats, ...]
    workers: tuple[WorkerStatus, ...]
    reconcilers: tuple[ReconcilerState, ...]
    dead_letters: dict[str, int] | None
    """How many dead letters each job has (jobs with none are absent)."""
    stopped_jobs: tuple[StoppedJob, ...] | None
    database_error: str | None
    outbox: Backlog | None = None
    """Transactional enqueues committed and not yet in Redis (``None``: PostgreSQL could
    not be read, or the outbox table is not there yet)."""
    rules: tuple[Rule, ...] | None = None
    """The argument rules in force (``None`` with the other PostgreSQL parts)."""
    controls: tuple[Control, ...] | None = None
    """Paused queues and throttles (:mod:`asyncjobs._controls`); ``None`` when PostgreSQL
    could not be read."""

    @property
    def paused_queues(self) -> tuple[Control, ...] | None:
        """The paused queues, with who paused them, when and why."""
        return None if self.controls is None else tuple(c for c in self.controls if c.rate is None)

    @property
    def throttles(self) -> tuple[Control, ...] | None:
        """The throttled job classes, with their rates."""
        return None if self.controls is None else tuple(c for c in self.controls if c.rate)

    def paused(self, queue: str) -> bool | None:
        """Whether ``queue`` is paused (``None``: unknown, PostgreSQL could not be read)."""
        paused = self.paused_queues
        return None if paused is None else any(c.target == queue for c in paused)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``asyncjobs status --json`` (keys in the README)."""
        dead = self.dead_letters
        stopped = self.stopped_jobs
        paused, throttles = self.paused_queues, self.throttles
        return {
            "at": iso(self.at),
            "queues": [{**q.as_dict(), "paused": self.paused(q.name)} for q in self.queues],
            "workers": [w.as_dict() for w in self.workers],
            "postgres": {"available": self.database_error is None, "error": self.database_error},
            "dead_letters": None
            if dead is None
            else [{"job_name": name, "count": count} for name, count in dead.items()],
            "stopped_jobs": None if stopped is None else [s.as_dict() for s in stopped],
            "rules": None if self.rules is None else [rule_record(r) for r in self.rules],
            "paused_queues": None if paused is None else [c.as_dict() for c in paused],
            "throttles": None if throttles is None else [c.as_dict() for c in throttles],
            "reconcilers": [r.as_dict() for r in self.reconcilers],
            "outbox": None if self.outbox is None else self.outbox.as_dict(),
        }

    def to_json(self) -> str:
        """:meth:`as_dict` as one JSON document."""
        return dumps(self.as_dict())


# -- Redis ------------------------------------------------------------------


def watched_queues(app: Core, workers: Iterable[WorkerInfo] = ()) -> list[str]:
    """The queues worth reporting: the default queue, ``ASYNCJOBS_QUEUES``, every queue
    a registered job names, and every queue one of ``workers`` reads; each once."""
    settings = app.settings
    named = sorted({spec.queue for spec in app.registry if spec.queue})
    read = sorted({queue for worker in workers for queue in worker.queues})
    return list(dict.fromkeys((settings.queue_name, *settings.queues, *named, *read)))


async def queue_stats(app: Core, queues: Sequence[str] | None = None) -> list[QueueStats]:
    """The numbers of ``queues`` (default: :func:`watched_queues`), in that order.

    Raises :class:`RedisUnavailableError` if Redis does not answer within
    ``settings.redis_timeout``, :class:`ConfigurationError` without a Redis URL.
    """
    stats, _ = await read_redis(app, queues)
    return stats


async def read_redis(
    app: Core, queues: Sequence[str] | None = None
) -> tuple[list[QueueStats], list[WorkerStatus]]:
    """The queues' numbers (as :func:`queue_stats`) and the live workers, oldest first."""
    redis = await app.redis()
    timeout = app.settings.redis_timeout
    try:
        async with asyncio.timeout(timeout):
            infos = await registered_workers(redis)
            names = list(queues) if queues is not None else watched_queues(app, infos)
            now_ms = timestamp_ms()
            script = await app.script(STATS_LUA)
            keys = [*(worker_jobs_key(w.id) for w in infos), *names]
            reply = await script(keys=keys, args=[now_ms, len(infos)])
    except REDIS_UNAVAILABLE as exc:
        raise RedisUnavailableError(
            f"Redis is unreachable ({type(exc).__name__}: {exc or f'no answer in {timeout}s'}). "
            "Check ASYNCJOBS_REDIS_URL and that Redis is running."
        ) from exc
    held, rest = reply[: len(infos)], reply[len(infos) :]
    workers = [_worker_status(info, int(count)) for info, count in zip(infos, held, strict=True)]
    stats = []
    for i, name in enumerate(names):
        ready, deferred, running, oldest = rest[4 * i : 4 * i + 4]
        age = None if oldest is None else max(0.0, (now_ms - float(oldest)) / 1000)
        stats.append(QueueStats(name, int(ready), int(deferred), int(running), age))
    return stats, workers


def _worker_status(info: WorkerInfo, running: int) -> WorkerStatus:
    return WorkerStatus(
        id=info.id,
        host=info.host,
        pid=info.pid,
        queues=info.queues,
        max_jobs=info.max_jobs,
        running=running,
        started=datetime.fromtimestamp(info.started, UTC),
        heartbeat=datetime.fromtimestamp(info.heartbeat, UTC),
    )


# -- PostgreSQL --------------------------------------------------------------


async def dead_letter_counts(app: Core) -> dict[str, int]:
    """How many dead letters each job has, by job name (jobs with none are absent)."""
    return await DeadLetters(app).counts()


def stopped_jobs(flags: Iterable[Flag]) -> list[StoppedJob]:
    """The jobs whose ``disable_<job>`` flag is on, among ``flags``."""
    return [
        StoppedJob(job, f.name, f.updated_at, f.updated_by, f.reason, f.expires_at)
        for f in flags
        if f.enabled and (job := job_of_flag(f.name)) is not None
    ]


def database_problem(exc: BaseException) -> str:
    """One line saying why PostgreSQL could not be read."""
    if isinstance(exc, asyncpg.UndefinedTableError):
        return "asyncjobs' tables are missing: run `asyncjobs migrate`"
    if isinstance(exc, AsyncJobsError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


DATABASE_ERRORS = (AsyncJobsError, asyncpg.PostgresError, OSError, TimeoutError)
"""What reading PostgreSQL may raise when it is unreachable, refusing, or not migrated."""


async def snapshot(app: App) -> Status:
    """Everything ``asyncjobs status`` shows.

    Raises :class:`RedisUnavailableError` when Redis cannot be read; a PostgreSQL
    that is not configured, unreachable or not migrated leaves its parts ``None``
    and says why in ``database_error``.
    """
    queues, workers = await read_redis(app)
    dead: dict[str, int] | None = None
    flags: list[Flag] | None = None
    outbox: Backlog | None = None
    rules: list[Rule] | None = None
    controls: list[Control] | None = None
    error: str | None = None
    if app.settings.database_url is None:
        error = "not configured (ASYNCJOBS_DATABASE_URL is not set)"
    else:
        try:
            dead = await dead_letter_counts(app)
            flags = await app.flags.list()
            outbox = await backlog(app)
            rules = await app.flags.rules()
            controls = await app.flags.list_controls()
        except DATABASE_ERRORS as exc:
            dead, flags, rules, controls, error = None, None, None, None, database_problem(exc)
    states = None if flags is None else {f.name: f.enabled for f in flags}
    return Status(
        at=datetime.now(UTC),
        queues=tuple(queues),
        workers=tuple(workers),
        reconcilers=tuple(ReconcilerState.of(rec, states) for rec in app.reconcilers),
        dead_letters=dead,
        stopped_jobs=None if flags is None else tuple(stopped_jobs(flags)),
        database_error=error,
        outbox=outbox,
        rules=None if rules is None else tuple(rules),
        controls=None if controls is None else tuple(controls),
    )


# -- the records of the other --json lists ------------------------------------


def job_record(
    spec: JobSpec,
    queue: str,
    states: Mapping[str, bool] | None,
    rules: Sequence[Rule] | None = None,
) -> dict[str, Any]:
    """A registered job (``jobs list``): ``name``, ``queue``, ``timeout_s``, ``stopped``,
    ``flag``, ``origin``, ``schedule`` and ``next_run`` (a scheduled job's, else ``null``),
    ``rules`` (the argument rules that apply to it, its own and the all-jobs ones its
    signature fits, as :func:`rule_record`; ``null`` when unknown). ``states`` maps flag
    names to whether they are on (``None``: unknown, so ``stopped`` is ``null``)."""
    schedule, next_run = job_schedule(spec)
    return {
        "name": spec.name,
        "queue": queue,
        "timeout_s": spec.timeout,
        "stopped": _stopped(spec.flag, states),
        "flag": spec.flag,
        "origin": spec.origin,
        "schedule": schedule,
        "next_run": None if next_run is None else iso(next_run),
        "rules": None if rules is None else [rule_record(r) for r in rules_of(spec, rules)],
    }


def rules_of(spec: JobSpec, rules: Iterable[Rule]) -> list[Rule]:
    """Among ``rules``, those that apply to ``spec``'s job: its own, and the all-jobs rules
    whose arguments its signature has."""
    return [
        r
        for r in rules
        if r.job == spec.name or (r.job == ALL_JOBS and takes(spec, (c.arg for c in r.conditions)))
    ]


def rule_record(rule: Rule) -> dict[str, Any]:
    """An argument rule: ``id``, ``job`` (``"*"``: every job class taking its arguments),
    ``flag``, ``rule`` (its text, e.g. ``customer_id=42``), ``created_at``, ``created_by``,
    ``reason``, ``until`` (``null``: until removed), ``rejected``, ``skipped``."""
    return {
        "id": rule.id,
        "job": rule.job,
        "flag": rule.flag,
        "rule": rule.text,
        "created_at": iso(rule.created_at),
        "created_by": rule.created_by,
        "reason": rule.reason,
        "until": None if rule.expires_at is None else iso(rule.expires_at),
        "rejected": rule.rejected,
        "skipped": rule.skipped,
    }


def job_schedule(spec: JobSpec, now: datetime | None = None) -> tuple[str | None, datetime | None]:
    """A scheduled job's schedule, for people, and its next run after ``now`` (default: now);
    ``(None, None)`` for a job without one."""
    if spec.schedule is None:
        return None, None
    return spec.schedule.describe(), spec.schedule.next_after(now or datetime.now(UTC))


def flag_record(flag: Flag, job_names: frozenset[str]) -> dict[str, Any]:
    """A flag (``flags list``): ``name``, ``enabled``, ``rejected``, ``skipped``,
    ``updated_at``, ``updated_by``, ``reason``, ``until`` (a timed stop's end, else
    ``null``), ``job`` (what a ``disable_<job>`` flag
    stops, else ``null``) and ``job_registered`` (whether that job is among ``job_names``;
    ``null`` for other flags, or when ``job_names`` is empty: no jobs imported)."""
    job = job_of_flag(flag.name)
    return {
        "name": flag.name,
        "enabled": flag.enabled,
        "rejected": flag.rejected,
        "skipped": flag.skipped,
        "updated_at": iso(flag.updated_at),
        "updated_by": flag.updated_by,
        "reason": flag.reason,
        "until": None if flag.expires_at is None else iso(flag.expires_at),
        "job": job,
        "job_registered": None if job is None or not job_names else job in job_names,
    }


def flag_event_record(event: FlagEvent) -> dict[str, Any]:
    """A flag change (``flags history``): ``name``, ``old_value`` (``null``: the flag was
    new), ``new_value``, ``actor``, ``reason``, ``at``, ``rule`` (the argument rule added or
    removed, else ``null``), ``until`` (the end the change set, else ``null``), ``detail``
    (a throttle's rate, for the ``throttle:<job>`` entries; ``pause:<queue>`` entries are a
    queue's pauses)."""
    return {
        "name": event.name,
        "old_value": event.old_value,
        "new_value": event.new_value,
        "actor": event.actor,
        "reason": event.reason,
        "at": iso(event.at),
        "rule": event.rule,
        "until": None if event.expires_at is None else iso(event.expires_at),
        "detail": event.detail,
    }


def dead_letter_record(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter (``dead list``): ``id``, ``job_name``, ``job_id``, ``queue``,
    ``reason``, ``tries``, ``error``, ``first_failed_at``, ``last_failed_at``,
    ``redacted``, ``args``, ``kwargs`` (both ``null`` when redacted or not kept)."""
    return {
        "id": letter.id,
        "job_name": letter.job_name,
        "job_id": letter.job_id,
        "queue": letter.queue,
        "reason": letter.reason,
        "tries": letter.tries,
        "error": letter.error,
        "first_failed_at": iso(letter.first_failed_at),
        "last_failed_at": iso(letter.last_failed_at),
        "redacted": letter.redacted,
        "args": letter.args,
        "kwargs": letter.kwargs,
    }
