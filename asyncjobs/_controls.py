"""Incident controls beside the kill switch: throttle a job class, pause a queue.

A **throttle** (``asyncjobs jobs throttle invoice_job 10/s``, or
``await app.flags.throttle("invoice_job", "10/s", reason=...)``) lets the
workers together start at most that many jobs of the class per period
(``/s``, ``/m``, ``/h``). A **pause** (``asyncjobs queues pause billing``, or
``await app.flags.pause_queue("billing", reason=...)``) stops every worker from
starting jobs of that queue; enqueues are still accepted and counted as ready.

Where the state lives. Both are rows of ``asyncjobs.controls`` in PostgreSQL
(so a Redis flush forgets neither), changed in one transaction with a row in
``asyncjobs.flag_history`` (named ``pause:<queue>`` or ``throttle:<job>``, the
rate in its ``detail``), so ``asyncjobs flags history`` is their audit trail
too. The flag store (:class:`asyncjobs._flags.FlagStore`) loads them with the
flags, keeps them for ``ASYNCJOBS_FLAG_TTL`` seconds and reloads at once on a
``NOTIFY`` of the flags channel: a worker learns a change within milliseconds
while PostgreSQL is up, and within the TTL should a notification be lost. A
worker never waits on PostgreSQL to claim: it reads the snapshot it has (a
stale one starts a reload in the background), except once at start, so that a
worker started during an incident does not run a paused queue's jobs first.

How a throttle is enforced. The claim script (:mod:`asyncjobs._claim`) cannot
read a job's name cheaply, so claiming is unchanged: while no throttle is set
the worker does exactly what it did before (one comparison per claim). While
some class is throttled, the worker tells which claimed jobs are of a throttled
class (one ``startswith`` per class at the spot where the payload names its job; a
full decode only for payloads of another shape)
and, for the jobs of throttled classes only, makes one :data:`LIMIT_LUA` call
per claim, with one count per class (its size does not grow with the batch).
That script is the limiter, shared by every worker through Redis: a
sliding-window log per class (``asyncjobs:throttle:<job>``, a sorted set of
grants scored by the millisecond, one entry per call, not per job), checked and
written atomically, so no window of one period ever holds more grants than the
rate. It answers how many may start and, for each job over the rate, the moment
a slot frees for it. Only when some are over the rate, a second call
(:data:`DEFER_LUA`) puts those back: scored in their queue at that moment (so
arq's ``Job.status()`` sees a deferred job), their in-progress key removed and
arq's try counter ``arq:retry:<id>`` given back, exactly as if they had never
been claimed. Until then the worker holds them (their in-progress keys), so no
other worker takes them in between. A deferral is therefore never
a try, never a drop; the limiter's Redis state is only the recent grants, and
losing it (a flush) only forgets the current window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from . import _logs as logs
from . import _settings as settings
from ._arq import IN_PROGRESS_PREFIX, RETRY_PREFIX, Redis, timestamp_ms
from ._claim import Claimed
from ._exceptions import ConfigurationError, ControlError

THROTTLE_PREFIX = "asyncjobs:throttle:"
"""``asyncjobs:throttle:<job>``: the limiter's log of recent grants for that job class."""
PAUSE = "pause"
THROTTLE = "throttle"
PERIODS: dict[str, int] = {"s": 1, "m": 60, "h": 3600}
"""The periods a rate may name, in seconds."""
MAX_RATE = 1_000_000
"""The most starts per period a throttle may allow."""
CONTROLS_CHANGED = "controls"
"""The NOTIFY payload (on the flags channel) that tells every process to reload controls.
It has no ``:``, so a flag store that predates controls simply reloads everything."""

_log = structlog.get_logger("asyncjobs.worker")
_RATE = re.compile(r"^\s*(-?\d+)\s*/\s*([A-Za-z]+)\s*$")
_QUEUE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,200}$")


@dataclass(frozen=True, slots=True)
class Rate:
    """A throttle's rate: at most ``limit`` starts per ``period_s`` seconds."""

    limit: int
    period_s: int

    @property
    def period_ms(self) -> int:
        """The period in milliseconds (the limiter's unit)."""
        return self.period_s * 1000

    def __str__(self) -> str:
        unit = next(u for u, s in PERIODS.items() if s == self.period_s)
        return f"{self.limit}/{unit}"


def parse_rate(text: str) -> Rate:
    """``"10/s"``, ``"600/m"``, ``"5000/h"`` as a :class:`Rate`; :class:`ControlError`
    naming the part to fix otherwise (``10/x``, ``0/s``, ``-1/s``, ``abc``)."""
    if not isinstance(text, str):
        raise ControlError(f"rate {text!r} is not a string like 10/s")
    match = _RATE.match(text)
    if match is None:
        raise ControlError(
            f"rate {text!r} is not a rate: write a whole number, a slash and a period, "
            "e.g. 10/s, 600/m or 5000/h"
        )
    count, unit = int(match[1]), match[2]
    if unit not in PERIODS:
        raise ControlError(
            f"rate {text!r}: unknown period {unit!r}; use s (second), m (minute) or h (hour)"
        )
    if count < 1:
        raise ControlError(
            f"rate {text!r}: the count must be at least 1 (to stop a job entirely, use "
            "`asyncjobs jobs disable`)"
        )
    if count > MAX_RATE:
        raise ControlError(f"rate {text!r}: the count must be at most {MAX_RATE:,}")
    return Rate(count, PERIODS[unit])


def check_queue_name(queue: str) -> str:
    """``queue`` if it can name a queue, else :class:`ControlError` saying why."""
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise ControlError(
            f"{queue!r} is not a queue name: 1 to 200 characters, no spaces or control "
            "characters (e.g. billing, or arq:queue)"
        )
    try:  # a name enqueue refuses (one of arq's own keys) names no queue to pause either
        settings.check_queue_name(queue, "the queue")
    except ConfigurationError as exc:
        raise ControlError(str(exc)) from None
    return queue


def pause_entry(queue: str) -> str:
    """The name a queue's pause has in ``flag_history``."""
    return f"{PAUSE}:{queue}"


def throttle_entry(job: str) -> str:
    """The name a job's throttle has in ``flag_history``."""
    return f"{THROTTLE}:{job}"


def is_control_entry(name: str) -> bool:
    """Whether a ``flag_history`` name is a pause's or a throttle's."""
    kind, sep, target = name.partition(":")
    return bool(sep) and kind in (PAUSE, THROTTLE) and bool(target)


@dataclass(frozen=True, slots=True)
class Controls:
    """What the workers obey now: the paused queues and the throttled job classes."""

    paused: frozenset[str] = frozenset()
    throttles: dict[str, Rate] = field(default_factory=dict)


NO_CONTROLS = Controls()


@dataclass(frozen=True, slots=True)
class Control:
    """A pause or a throttle as ``asyncjobs status`` reports it."""

    kind: str
    """``"pause"`` (``target`` is a queue) or ``"throttle"`` (``target`` is a job)."""
    target: str
    rate: Rate | None
    """The throttle's rate (``None`` for a pause)."""
    updated_at: datetime
    updated_by: str
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: ``queue`` or ``job``, ``rate`` (throttles: ``"10/s"``,
        ``limit``, ``period_s``), ``since``, ``by``, ``reason``."""
        record: dict[str, Any] = {"queue" if self.kind == PAUSE else "job": self.target}
        if self.rate is not None:
            record.update(rate=str(self.rate), limit=self.rate.limit, period_s=self.rate.period_s)
        record.update(
            since=self.updated_at.astimezone(UTC).isoformat(),
            by=self.updated_by,
            reason=self.reason,
        )
        return record


def controls_of(rows: list[Any]) -> Controls:
    """The :class:`Controls` in rows of ``(kind, target, rate_limit, period_s)``."""
    paused = frozenset(r[1] for r in rows if r[0] == PAUSE)
    throttles = {r[1]: Rate(r[2], r[3]) for r in rows if r[0] == THROTTLE}
    return Controls(paused, throttles)


LOAD_SQL = "SELECT kind, target, rate_limit, period_s FROM asyncjobs.controls"
LIST_SQL = (
    "SELECT kind, target, rate_limit, period_s, updated_at, updated_by, reason "
    "FROM asyncjobs.controls ORDER BY kind, target"
)
GET_SQL = (
    "SELECT rate_limit, period_s FROM asyncjobs.controls WHERE kind = $1 AND target = $2 FOR UPDATE"
)
SET_SQL = """
INSERT INTO asyncjobs.controls (kind, target, rate_limit, period_s, updated_by, reason)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (kind, target) DO UPDATE
SET rate_limit = EXCLUDED.rate_limit, period_s = EXCLUDED.period_s, updated_at = now(),
    updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason
"""
DELETE_SQL = "DELETE FROM asyncjobs.controls WHERE kind = $1 AND target = $2"
HISTORY_SQL = """
INSERT INTO asyncjobs.flag_history (name, old_value, new_value, actor, reason, detail)
VALUES ($1, $2, $3, $4, $5, $6)
"""


def control_of(row: Any) -> Control:
    """A :data:`LIST_SQL` row as a :class:`Control`."""
    rate = Rate(row[2], row[3]) if row[0] == THROTTLE else None
    return Control(row[0], row[1], rate, row[4], row[5], row[6])


def name_markers(names: Iterable[str]) -> list[tuple[str, bytes]]:
    """For each job name, the bytes that follow the try in its payloads
    (``,"f":"invoice_job",``): finding them among a payload's first bytes tells the job
    without decoding it (see :func:`throttled_class`)."""
    return [(name, b',"f":"' + name.encode() + b'",') for name in names]


def throttled_class(payload: bytes, markers: list[tuple[str, bytes]]) -> str | None:
    """Which of the names of ``markers`` ``payload`` is a job of, or ``None``. The name
    follows the try (``{"t":null,`` or ``{"t":3,``) at once: one ``startswith`` at that
    spot per throttled class, no decode (an argument can never be taken for the name). A
    payload of another shape is decoded."""
    after_try = payload.find(b",", 5, 26) if payload.startswith(b'{"t":') else -1
    if after_try < 0 or not payload.startswith(b',"f":"', after_try):
        return _decoded_name(payload, markers)  # not asyncjobs' compact form
    for name, marker in markers:
        if payload.startswith(marker, after_try):
            return name
    return None


def _decoded_name(payload: bytes, markers: list[tuple[str, bytes]]) -> str | None:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    name = data.get("f") if isinstance(data, dict) else None
    return name if any(name == n for n, _ in markers) else None


LIMIT_LUA = f"""
local LOG = {THROTTLE_PREFIX!r}
-- ARGV: now (ms), a tag unique to this call, how many classes; then per class: job name,
--   limit, period (ms), n (how many jobs of the class were claimed just now).
-- Per class, the first jobs up to what the sliding window of one period allows are
-- granted, recorded in the class's log as one entry 'tag:class:count' scored now.
-- Reply per class: how many granted, how many not, then for each job not granted the
-- moment (ms) a slot frees for it (the k-th waits until enough grants left the window).
local now, tag, nclasses = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out, i = {{}}, 4
for c = 1, nclasses do
  local job, limit, period, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
    tonumber(ARGV[i + 3])
  i = i + 4
  local key = LOG .. job
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local log = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local used, scores, counts = 0, {{}}, {{}}
  for e = 1, #log, 2 do
    local count = tonumber(string.match(log[e], '(%d+)$')) or 1
    used = used + count
    scores[#scores + 1] = tonumber(log[e + 1])
    counts[#counts + 1] = count
  end
  local granted = math.min(n, math.max(0, limit - used))
  if granted > 0 then
    redis.call('ZADD', key, now, tag .. ':' .. c .. ':' .. granted)
    used = used + granted
    scores[#scores + 1] = now
    counts[#counts + 1] = granted
  end
  redis.call('PEXPIRE', key, period)
  out[#out + 1] = granted
  out[#out + 1] = n - granted
  local at = {{}}
  for k = 0, n - granted - 1 do
    -- Job k over the rate runs once (used - limit + 1 + k) grants have left the window;
    -- past the log's end, one period after the job a limit earlier.
    local need = used - limit + 1 + k
    local when = nil
    if need > used then
      when = at[k - limit] + period
    else
      local sum = 0
      for e = 1, #scores do
        sum = sum + counts[e]
        if sum >= need then
          when = scores[e] + period
          break
        end
      end
    end
    at[k] = when
    out[#out + 1] = when
  end
end
return out
"""
"""Lua: the shared limiter, one atomic call per claim that took jobs of throttled classes."""

DEFER_LUA = f"""
local IN_PROGRESS, RETRY = {IN_PROGRESS_PREFIX!r}, {RETRY_PREFIX!r}
-- KEYS[1]: this worker's set of running job ids. ARGV[1]: worker id; then per job: id,
-- queue, when (ms). Each job is put back as if never claimed: its in-progress key
-- deleted, arq's try counter given back, gone from this worker's set, and scored in its
-- queue at ``when`` (so arq's Job API sees it deferred). Only while it is still this
-- worker's (not after a recovery handed it elsewhere).
local wid = ARGV[1]
for i = 2, #ARGV, 3 do
  local id, queue, when = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('GET', IN_PROGRESS .. id) == wid then
    redis.call('DEL', IN_PROGRESS .. id)
    if redis.call('DECR', RETRY .. id) <= 0 then redis.call('DEL', RETRY .. id) end
    redis.call('ZADD', queue, 'XX', when, id)
  end
  redis.call('SREM', KEYS[1], id)
end
return 1
"""
"""Lua: put back the jobs over the rate, deferred to their slots, their tries not counted."""


@dataclass(frozen=True, slots=True)
class ControlChange:
    """What a pause, resume, throttle or unthrottle did."""

    kind: str
    """``"pause"`` or ``"throttle"``."""
    target: str
    """The queue, or the job."""
    was: str | None
    """Before: a rate (``"10/s"``), ``"paused"``, or ``None`` (not set)."""
    now: str | None
    """After, in the same words."""
    changed: bool


class Limiter:
    """A worker's side of the throttles: which claimed jobs may start now.

    ``redis`` is the worker's claim connection (it never resends a call), ``worker_id``
    and ``jobs_key`` the worker's id and set of held jobs. :meth:`admit` makes one
    :data:`LIMIT_LUA` call per claim that took jobs of throttled classes, and one
    :data:`DEFER_LUA` call when some are over the rate.
    """

    def __init__(self, redis: Redis, worker_id: str, jobs_key: str) -> None:
        self._limit = redis.register_script(LIMIT_LUA)
        self._defer = redis.register_script(DEFER_LUA)
        self._worker_id = worker_id
        self._jobs_key = jobs_key
        self._markers: list[tuple[str, bytes]] = []
        self._marked: dict[str, Rate] | None = None  # the throttles _markers are for
        self.calls = 0
        """How many limiter calls this worker made (for benchmarks)."""

    async def admit(self, jobs: list[Claimed], throttles: dict[str, Rate]) -> list[Claimed]:
        """The jobs of ``jobs`` that may start now: every job of a class not throttled, and
        of each throttled class as many as its rate allows; the others are put back,
        deferred to when a slot frees, their tries not counted. A job whose payload is
        gone or that was aborted is never held back (the worker ends it at once)."""
        if self._marked is not throttles:
            self._markers, self._marked = name_markers(throttles), throttles
        groups: dict[str, list[Claimed]] = {}
        free: list[Claimed] = []
        for job in jobs:
            payload = job.payload
            name = None
            if payload is not None and not job.aborted:
                name = throttled_class(payload, self._markers)
            if name is None:
                free.append(job)
            else:
                groups.setdefault(name, []).append(job)
        if not groups:
            return jobs
        self.calls += 1
        args: list[Any] = [timestamp_ms(), f"{self._worker_id}:{self.calls}", len(groups)]
        for name, group in groups.items():
            rate = throttles[name]
            args += [name, rate.limit, rate.period_ms, len(group)]
        reply = await self._limit(args=args)
        deferred: list[Any] = [self._worker_id]
        at = 0
        for name, group in groups.items():
            granted, over = int(reply[at]), int(reply[at + 1])
            whens = reply[at + 2 : at + 2 + over]
            at += 2 + over
            free += group[:granted]
            for job, when in zip(group[granted:], whens, strict=True):
                deferred += [job.job_id, job.queue, int(when)]
            if over:
                _log.debug(
                    logs.JOBS_THROTTLED,
                    job=name,
                    rate=str(throttles[name]),
                    started=granted,
                    deferred=over,
                    next_at_ms=int(whens[0]),
                    worker_id=self._worker_id,
                )
        if len(deferred) > 1:
            await self._defer(keys=[self._jobs_key], args=deferred)
        return free
