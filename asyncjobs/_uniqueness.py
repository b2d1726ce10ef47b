"""Unique jobs at enqueue time, and exclusive execution under PostgreSQL advisory locks.

Unique jobs: a second enqueue of the same job and arguments is refused for a while.

``@job(unique_for=timedelta(minutes=1), unique_until="success")`` takes a lock
in Redis when a job is enqueued, in the same Lua call that writes the job (no
extra round trip, no window between the check and the write). While the lock
exists, ``enqueue()`` of the same job with the same arguments (or the same
value of ``unique_key=``) returns ``None`` and logs ``job.rejected`` with
``reason="unique"``. The lock goes:

- with ``unique_until="start"``, when the job starts running;
- with ``unique_until="success"`` (the default, as Sidekiq Enterprise), when it
  succeeds, or when it fails for good (dead letter). A failure that will be
  retried keeps it;
- in every case after ``unique_for`` at the latest (the lock's TTL), so a lost
  worker never leaves a job un-enqueueable for longer.

The lock is ``asyncjobs:unique:<job>:<32 hex>``, a BLAKE2b digest of the
arguments (or of ``unique_key(*args, **kwargs)``) as sorted JSON, holding the id
of the job that took it; only that job releases it.

Exclusive jobs: ``@job(lock=lambda invoice_id: f"invoice:{invoice_id}")`` (or
``exclusive=True``: one per job and arguments) makes the worker take
``pg_try_advisory_lock(key)`` before the job runs and release it after. The key
is the first 8 bytes of a BLAKE2b digest of the lock string, as a signed 64-bit
integer (:func:`advisory_key`): stable across processes and Python versions.
When the lock is held elsewhere the job is re-deferred by ``lock_retry``
seconds (with jitter; these waits do not count as tries) or, with
``on_locked="drop"``, dropped; both are logged (``job.locked``). Each running
exclusive job holds one connection of a separate pool of at most
``ASYNCJOBS_LOCK_CONNECTIONS`` per worker process; when all are busy, the job
is re-deferred as if locked, so locks never take the connections other
queries need. A worker that dies loses its sessions, and PostgreSQL frees
their locks at once: no lock outlives its connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._naming import stable_digest

if TYPE_CHECKING:
    from ._arq import Redis
    from ._jobs import JobSpec

UNIQUE_PREFIX = "asyncjobs:unique:"

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def unique_key(spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The lock key of this call of ``spec``, or ``None`` for a job that is not unique."""
    if spec.unique_for is None:
        return None
    value = spec.unique_key(*args, **kwargs) if spec.unique_key is not None else [args, kwargs]
    return f"{UNIQUE_PREFIX}{spec.name}:{stable_digest(value).hex()}"


async def release(redis: Redis, key: str, job_id: str) -> bool:
    """Delete the lock if ``job_id`` holds it; whether it did."""
    return bool(await redis.eval(_RELEASE_LUA, 1, key, job_id))  # type: ignore[misc]


LOCK_WAITS_PREFIX = "asyncjobs:lock-waits:"


def advisory_key(lock: str) -> int:
    """The signed 64-bit advisory-lock key of the lock string ``lock``."""
    return int.from_bytes(stable_digest(lock, 8), "big", signed=True)


def lock_name(spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The lock string of this call of ``spec``, or ``None`` if it needs no lock."""
    if spec.lock is not None:
        return str(spec.lock(*args, **kwargs))
    if spec.exclusive:
        return f"{spec.name}:{stable_digest([args, kwargs]).hex()}"
    return None
