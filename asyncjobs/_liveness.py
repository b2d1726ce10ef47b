"""Worker liveness: registrations, heartbeats, and handing a dead worker's jobs back.

Each worker process registers itself in Redis under ``asyncjobs:worker:<id>``
(a hash: id, host, pid, queues, started, heartbeat, running job ids and when
it started each) and renews it every ``ASYNCJOBS_HEARTBEAT`` seconds (default
2); the hash expires after three missed beats. Its id is also in the set
``asyncjobs:workers``,
and the ids of the jobs it has claimed and not finished are in
``asyncjobs:worker-jobs:<id>``, which does not expire.

On every beat, each live worker also runs :data:`~asyncjobs._claim.RECOVER_LUA`:
a registered worker whose hash has expired is dead (SIGKILL, the OOM killer,
a lost machine), and each job it still held is made ready again at once,
counted as a try, and logged ``worker.recovered``. The script is atomic, so
however many workers are alive, each dead one is recovered once. With the
default heartbeat a killed worker's jobs run again elsewhere within about
8 seconds, rather than when arq's in-progress keys expire (job timeout + 10 s).

The beat runs on the worker's event loop, which a job can block (CPU-bound code
or ``time.sleep`` in an ``async def``), and a busy machine can starve. So that a
blocked loop is not taken for dead, a :class:`Keepalive` thread of the same
process, on a synchronous connection of its own, renews the registration's TTL
(``PEXPIRE``, nothing else) every heartbeat too: while the process lives, its
registration does, and its jobs are not started again elsewhere. The beat on the
loop still writes the registration's fields (running jobs, last heartbeat) and
does the recovery. ``PEXPIRE`` on a missing key does nothing, so the thread never
brings back a registration that expired or was removed; and SIGKILL or the OOM
killer ends the thread with the process, so a killed worker's jobs are still
recovered within three heartbeats. The trade-off: a loop blocked for good (a job
that never yields) keeps its jobs held until their in-progress keys expire (the
job's timeout + 11 s, as arq), not three heartbeats; its ``/healthz`` turns 503
once the loop has not ticked for three heartbeats, so an orchestrator restarts
it. The thread needs the GIL: code that holds it for seconds (some C extensions)
still stops the renewal, as does a whole machine starved for three heartbeats;
then the worker logs ``worker.presumed_dead`` at its next beat.

:func:`registered_workers` reads the registrations, for ``status``, metrics
and the dashboard.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from . import _logs as logs
from ._claim import WORKER_JOBS_PREFIX, WORKER_PREFIX, WORKERS_KEY

MISSED_BEATS = 3
"""A registration expires after this many heartbeats without renewal."""

_log = structlog.get_logger("asyncjobs.worker")


def new_worker_id() -> str:
    """``host:pid:random``, unique across restarts and machines."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_key(worker_id: str) -> str:
    """The key of a worker's registration hash."""
    return WORKER_PREFIX + worker_id


def worker_jobs_key(worker_id: str) -> str:
    """The key of the set of job ids a worker holds."""
    return WORKER_JOBS_PREFIX + worker_id


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's registration as last written by its heartbeat."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    started: float
    heartbeat: float
    running: tuple[str, ...]
    max_jobs: int
    running_since: dict[str, float] = field(default_factory=dict)
    """When the worker started each running job (Unix seconds), by job id."""


def registration(
    worker_id: str,
    queues: tuple[str, ...],
    started: float,
    running: list[str],
    max_jobs: int,
    since: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """The fields of a worker's registration hash, as strings; ``since`` maps the running
    jobs' ids to when this worker started them (Unix seconds)."""
    host, pid, _ = worker_id.rsplit(":", 2)
    return {
        "id": worker_id,
        "host": host,
        "pid": pid,
        "queues": ",".join(queues),
        "started": f"{started:.3f}",
        "heartbeat": f"{time.time():.3f}",
        "running": json.dumps(running),
        "max_jobs": str(max_jobs),
        "running_since": json.dumps({k: round(v, 3) for k, v in (since or {}).items()}),
    }


async def beat(
    redis: Any,
    worker_id: str,
    fields: dict[str, str],
    ttl_ms: int,
) -> bool:
    """Write (or renew) the registration; returns whether it still existed before.

    ``False`` on a worker's first beat, and after other workers took it for dead.
    """
    key = worker_key(worker_id)
    pipe = redis.pipeline(transaction=True)
    pipe.exists(key)
    pipe.hset(key, mapping=fields)
    pipe.pexpire(key, ttl_ms)
    pipe.sadd(WORKERS_KEY, worker_id)
    existed, *_ = await pipe.execute()
    return bool(existed)


async def deregister(redis: Any, worker_id: str) -> None:
    """Remove a stopping worker's registration (its jobs were handed back first)."""
    pipe = redis.pipeline(transaction=True)
    pipe.delete(worker_key(worker_id), worker_jobs_key(worker_id))
    pipe.srem(WORKERS_KEY, worker_id)
    await pipe.execute()


async def registered_workers(redis: Any) -> list[WorkerInfo]:
    """Every live worker's registration, oldest first."""
    members = await redis.smembers(WORKERS_KEY)
    ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(worker_key(worker_id))
    found = []
    for raw in await pipe.execute():
        if not raw:
            continue  # expired: dead, not yet recovered
        data = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        found.append(
            WorkerInfo(
                id=data["id"],
                host=data.get("host", ""),
                pid=int(data.get("pid", 0) or 0),
                queues=tuple(q for q in data.get("queues", "").split(",") if q),
                started=float(data.get("started", 0) or 0),
                heartbeat=float(data.get("heartbeat", 0) or 0),
                running=tuple(json.loads(data.get("running", "[]"))),
                max_jobs=int(data.get("max_jobs", 0) or 0),
                running_since=json.loads(data.get("running_since", "{}")),
            )
        )
    return sorted(found, key=lambda w: (w.started, w.id))


class BlockingClient(Protocol):
    """What the keepalive needs of a synchronous Redis client (redis-py's ``Redis``)."""

    def pexpire(self, name: str, time: int) -> Any: ...

    def close(self) -> None: ...


class Keepalive:
    """A daemon thread that renews a worker's registration TTL while the process lives.

    Every ``interval`` seconds it sends ``PEXPIRE asyncjobs:worker:<id> ttl_ms`` on
    ``client``, which it owns and closes when it ends. It renews only: on a missing
    key (expired and recovered, or deregistered) ``PEXPIRE`` does nothing. A failure
    (Redis unreachable) is logged once per outage, as ``worker.heartbeat_failed``
    with ``keepalive=True``, and the thread carries on; nothing it meets ends it
    before :meth:`stop`.
    """

    def __init__(self, client: BlockingClient, worker_id: str, interval: float, ttl_ms: int):
        self._client = client
        self._worker_id = worker_id
        self._key = worker_key(worker_id)
        self._interval = interval
        self._ttl_ms = ttl_ms
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asyncjobs.keepalive", daemon=True)

    def start(self) -> None:
        """Start renewing (after the worker's first beat wrote the registration)."""
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop renewing; wait up to ``timeout`` seconds for a renewal under way.

        Called before the worker deregisters. A renewal still under way after
        ``timeout`` (Redis slow to answer) is harmless: it lands before the removal,
        or finds no key.
        """
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        try:
            while not self._stopped.wait(self._interval):
                try:
                    self._client.pexpire(self._key, self._ttl_ms)
                except Exception as exc:
                    if not failing:
                        _log.warning(
                            logs.WORKER_HEARTBEAT_FAILED,
                            worker_id=self._worker_id,
                            keepalive=True,
                            error=repr(exc),
                        )
                    failing = True
                else:
                    failing = False
        finally:
            with contextlib.suppress(Exception):  # closing its sockets: nothing to report
                self._client.close()
