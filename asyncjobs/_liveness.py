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

The beat runs on the worker's event loop: a job that blocks the loop for
longer than three heartbeats (CPU-bound code in an ``async def``) makes its
worker look dead, and its jobs are handed to another worker while it still
runs them. The worker notices at its next beat and logs
``worker.presumed_dead``. Keep blocking work off the loop
(``asyncio.to_thread``), or raise ``ASYNCJOBS_HEARTBEAT``.

:func:`registered_workers` reads the registrations, for ``status``, metrics
and the dashboard.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._claim import WORKER_JOBS_PREFIX, WORKER_PREFIX, WORKERS_KEY

MISSED_BEATS = 3
"""A registration expires after this many heartbeats without renewal."""


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
