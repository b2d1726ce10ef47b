"""Cancel a job: a queued or deferred one leaves its queue; a running one is stopped.

``await asyncjobs.cancel(job_id, reason=...)`` (or ``asyncjobs jobs cancel ID``)
runs one atomic Lua call:

- a job some worker is running (its in-progress key exists) is added to arq's
  abort set; the worker running it cancels it within about half a second and
  records it as finished with a ``CancelledError`` result (kept at least a
  minute, so arq's ``job.abort()`` sees it): it is neither retried nor
  dead-lettered. Outcome ``"cancelling"``.
- a queued or deferred job is removed: its queue entry, its payload and its
  try counter go. Outcome ``"cancelled"``; arq's ``Job.status()`` then says
  ``not_found``, as it does for a job arq aborted before it started.
- a job whose result is kept has finished: ``"finished"``; an id Redis does
  not know: ``"not_found"``. Neither changes anything.

Who cancelled and why is kept beside the job for a day and logged with
``job.cancelled`` by the caller and, for a running job, by the worker.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog

from . import _logs as logs
from ._arq import (
    ABORT_SET,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    REDIS_UNAVAILABLE,
    RESULT_PREFIX,
    RETRY_PREFIX,
    timestamp_ms,
)
from ._exceptions import CancelError

if TYPE_CHECKING:
    from ._core import Core

_log = structlog.get_logger("asyncjobs.cancel")

CANCEL_INFO_PREFIX = "asyncjobs:cancel:"
"""``asyncjobs:cancel:<id>``: who cancelled the job and why (JSON), kept a day."""
MAX_JOB_ID_LENGTH = 1024

Outcome = Literal["cancelled", "cancelling", "finished", "not_found"]

CANCEL_LUA = """
-- KEYS: job, in-progress, result, abort set, cancel info, try counter, then the queues
-- the job may wait in. ARGV: now (ms), who and why (JSON), its TTL (s), arq's job prefix.
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[1], string.sub(KEYS[1], #ARGV[4] + 1))
  redis.call('SET', KEYS[5], ARGV[2], 'EX', ARGV[3])
  return {'cancelling', ''}
end
local id = string.sub(KEYS[1], #ARGV[4] + 1)
for i = 7, #KEYS do
  if redis.call('ZREM', KEYS[i], id) == 1 then
    redis.call('DEL', KEYS[1], KEYS[6])
    redis.call('SET', KEYS[5], ARGV[2], 'EX', ARGV[3])
    return {'cancelled', KEYS[i]}
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'finished', ''} end
return {'not_found', ''}
"""


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What :func:`cancel` did: ``outcome`` and, for a removed job, its ``queue``."""

    job_id: str
    outcome: Outcome
    queue: str | None = None

    def __str__(self) -> str:
        return {
            "cancelled": f"job {self.job_id} cancelled: removed from queue {self.queue}",
            "cancelling": f"job {self.job_id} is running: its worker stops it within a second",
            "finished": f"job {self.job_id} has already finished (its result is kept)",
            "not_found": (
                f"no job {self.job_id} is queued or running (never enqueued, finished without "
                "a kept result, or on a queue this App does not know: pass queue= or --queue)"
            ),
        }[self.outcome]


def check_job_id(job_id: Any) -> str:
    """The job id, or a :class:`CancelError` saying what is wrong with it."""
    if not isinstance(job_id, str) or not job_id.strip():
        raise CancelError(f"a job id is a non-empty string, not {job_id!r}")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        raise CancelError(f"a job id is at most {MAX_JOB_ID_LENGTH} characters")
    if job_id != job_id.strip() or any(ch in job_id for ch in "\r\n\0"):
        raise CancelError(f"job id {job_id!r} has surrounding spaces or control characters")
    for prefix in (JOB_PREFIX, IN_PROGRESS_PREFIX, RESULT_PREFIX, RETRY_PREFIX):
        if job_id.startswith(prefix):
            raise CancelError(
                f"{job_id!r} is a Redis key, not a job id: pass {job_id[len(prefix) :]!r}"
            )
    return job_id


async def cancel(
    app: Core,
    job_id: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    queue: str | None = None,
) -> CancelResult:
    """Cancel ``job_id`` (see the module docstring); nothing is half-done.

    The job is looked for in ``queue`` if given, else in the App's default queue
    and every queue a registered job names. Raises :class:`CancelError` for a
    malformed id or when Redis cannot be reached (then nothing changed).
    """
    job_id = check_job_id(job_id)
    actor = actor or _os_user()
    queues = [queue] if queue else _queues(app)
    keys = [
        JOB_PREFIX + job_id,
        IN_PROGRESS_PREFIX + job_id,
        RESULT_PREFIX + job_id,
        ABORT_SET,
        CANCEL_INFO_PREFIX + job_id,
        RETRY_PREFIX + job_id,
        *queues,
    ]
    info = json.dumps({"actor": actor, "reason": reason, "at": time.time()})
    try:
        redis = await app.redis()
        args = (str(timestamp_ms()), info, "86400", JOB_PREFIX)
        async with asyncio.timeout(app.settings.redis_timeout):
            reply = await redis.eval(CANCEL_LUA, len(keys), *keys, *args)  # type: ignore[misc]
    except TimeoutError as exc:
        raise CancelError(
            f"Redis did not answer within {app.settings.redis_timeout}s: job {job_id} may or "
            "may not be cancelled. Run the cancel again (cancelling twice is harmless)."
        ) from exc
    except REDIS_UNAVAILABLE as exc:
        raise CancelError(
            f"Redis is unreachable ({type(exc).__name__}: {exc}); job {job_id} was not cancelled. "
            "Check ASYNCJOBS_REDIS_URL and that Redis is running."
        ) from exc
    outcome, where = (part.decode() if isinstance(part, bytes) else str(part) for part in reply)
    result = CancelResult(job_id, outcome, where or None)  # type: ignore[arg-type]
    if outcome in ("cancelled", "cancelling"):
        _log.info(
            logs.JOB_CANCELLED,
            job_id=job_id,
            actor=actor,
            reason=reason,
            outcome=outcome,
            queue=result.queue,
        )
    return result


def _queues(app: Core) -> list[str]:
    named = sorted({spec.queue for spec in app.registry if spec.queue})
    return list(dict.fromkeys((app.settings.queue_name, *app.settings.queues, *named)))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"
