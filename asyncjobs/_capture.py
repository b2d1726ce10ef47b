"""Test mode: collect what the code under test enqueues, then run it in process.

::

    async with asyncjobs.testing.capture() as jobs:
        response = await client.post("/invoices", json={...})   # the handler enqueues
        jobs.assert_enqueued(send_invoice_job, 42)
        await jobs.run_all()                                     # runs it, and what it enqueues

While a capture is in force, every enqueue of this process (any App: the default one,
one a web app's lifespan made) goes through the real client chain — option checks, the
JSON payload, client middleware, the kill switch — and only the last step changes: the
job is kept in the capture instead of being written to Redis (a
:class:`~asyncjobs._enqueue.Diversion`). So a job whose ``disable_<job>`` flag is on is
rejected (``enqueue()`` returns ``None``) and is not captured, as in production. Redis
is not needed, except for a job with ``unique_for``: its uniqueness lock is taken in
Redis as in production (and freed when the job runs), so such a test needs
``ASYNCJOBS_REDIS_URL``. A ``_job_id`` that a captured job still waiting to run holds is
a duplicate (``None``), as in Redis.

:meth:`Capture.run_all` runs the captured jobs in order, each through the same
execution path a worker uses (:func:`~asyncjobs._execution.execution_chain`: outcome
events and dead letters, the timeout, the advisory lock of an exclusive job, the App's
server middleware with the kill switch's execution gate) on the App that enqueued it,
with a ``ctx`` as a worker gives it (``ctx["redis"]`` only when the App has a Redis
URL). Jobs enqueued meanwhile are run too, until none is left. What was chosen where
the issue is silent:

- Order: first captured, first run. ``_defer_by``/``_defer_until``/``_jitter`` are
  recorded (``run_at``) but not waited for.
- A try the execution path retries (backoff, ``Retry``, a held lock) is run again at
  once, at the back of the line, without waiting its delay; ``retries=False`` gives
  every job one try only (as ``max_tries=1``).
- A job that fails for good is handled as in a worker (``job.failed``, a dead letter
  when the App has PostgreSQL) and then its exception is raised from ``run_all()``
  with a note naming the job; the jobs after it stay captured.
- ``limit`` bounds the runs of one ``run_all()`` (1,000): past it,
  :class:`~asyncjobs.RunLimitError` names the jobs that kept coming back.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, cast

from ._app import App
from ._arq import REDIS_UNAVAILABLE, Job, JobStatus, Retry, ms_to_datetime
from ._core import Core, ExecutionRequest, JobContext
from ._enqueue import DIVERSIONS, DUPLICATE_ID, NOT_UNIQUE, TRACE_CONTEXT_KEY, WRITTEN, Prepared
from ._exceptions import (
    AsyncJobsError,
    ConfigurationError,
    RedisUnavailableError,
    RunLimitError,
)
from ._execution import execution_chain
from ._jobs import SPEC_ATTRIBUTE, JobSpec
from .serializer import deserialize

Status = Literal["queued", "succeeded", "failed", "skipped"]

DEFAULT_LIMIT = 1000
"""How many job runs one :meth:`Capture.run_all` makes at most, by default."""


@dataclass(slots=True, eq=False)
class CapturedJob:
    """One job a :class:`Capture` kept instead of writing it to Redis.

    ``args`` and ``kwargs`` are what the job will get: its payload read back from JSON,
    as a worker reads it (a tuple argument arrives as a list). ``status`` moves from
    ``"queued"`` to ``"succeeded"``, ``"failed"`` or ``"skipped"`` (its kill switch was
    on when it ran) as :meth:`Capture.run_all` runs it; ``tries`` counts its runs.
    """

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job_id: str
    queue: str
    run_at: datetime
    """When it would have been due (``_defer_by`` and the like); run_all does not wait."""
    enqueue_time: datetime
    app: Core = field(repr=False)
    score: int = field(default=0, repr=False)
    """``run_at`` in milliseconds, arq's queue score (``ctx["score"]``)."""
    unique_key: str | None = field(default=None, repr=False)
    trace_context: object = field(default=None, repr=False)
    status: Status = "queued"
    tries: int = 0
    result: Any = None
    error: BaseException | None = None

    def call(self) -> str:
        """``name(args, key=value)``, for messages."""
        return _call(self.name, self.args, self.kwargs)


class CapturedJobHandle(Job):
    """What ``enqueue()`` returns under a capture: arq's Job for a captured job.

    ``job_id`` is the id the job would have had in Redis. :meth:`status` and
    :meth:`result` answer from the capture; the job is not in Redis, so the calls that
    read Redis (``info``, ``result_info``, ``abort``) raise :class:`AsyncJobsError`.
    """

    __slots__ = ("captured",)

    def __init__(self, captured: CapturedJob) -> None:
        super().__init__(
            captured.job_id,
            redis=cast(Any, None),
            _queue_name=captured.queue,
            _deserializer=deserialize,
        )
        self.captured = captured

    async def status(self) -> JobStatus:
        """``queued`` until run_all ran it, then ``complete``."""
        return JobStatus.queued if self.captured.status == "queued" else JobStatus.complete

    async def result(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 -- arq's signature
        *,
        poll_delay: float = 0.5,
        pole_delay: float | None = None,
    ) -> Any:
        """The job's result once run_all ran it, or its exception raised again."""
        captured = self.captured
        if captured.status == "queued":
            raise AsyncJobsError(
                f"job {captured.call()} is captured and has not run yet: await jobs.run_all() first"
            )
        if captured.error is not None:
            raise captured.error
        return captured.result

    async def info(self) -> Any:
        raise self._not_in_redis("info()")

    async def result_info(self) -> Any:
        raise self._not_in_redis("result_info()")

    async def abort(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- arq's signature
        poll_delay: float = 0.5,
    ) -> bool:
        raise self._not_in_redis("abort()")

    def _not_in_redis(self, what: str) -> AsyncJobsError:
        return AsyncJobsError(
            f"{what} reads Redis, and job {self.captured.call()} was captured, not written "
            "there; read the CapturedJob (jobs.enqueued) instead"
        )


class Capture:
    """The jobs enqueued while it is in force; see :mod:`asyncjobs._capture`.

    Use through :func:`asyncjobs.testing.capture`. ``enqueued`` lists every captured
    job in order, including those enqueued by jobs that :meth:`run_all` ran.
    """

    def __init__(self) -> None:
        self.enqueued: list[CapturedJob] = []
        self._waiting: deque[CapturedJob] = deque()
        self._ids: set[str] = set()
        self._latest: dict[str, CapturedJob] = {}

    # -- the diversion: what replaces the write to Redis -------------------------------------

    async def write(self, app: Core, jobs: list[Prepared]) -> list[int]:
        """Keep each job; answer as the enqueue script would (see :class:`Diversion`)."""
        codes = []
        for job in jobs:
            if job.job_id in self._ids:
                codes.append(DUPLICATE_ID)
                continue
            if job.unique_key is not None and not await self._lock(app, job):
                codes.append(NOT_UNIQUE)
                continue
            data = json.loads(job.payload)
            captured = CapturedJob(
                name=data["f"],
                args=tuple(data["a"]),
                kwargs=data["k"],
                job_id=job.job_id,
                queue=job.queue,
                run_at=ms_to_datetime(job.score),
                enqueue_time=ms_to_datetime(data["et"]),
                app=app,
                score=job.score,
                unique_key=job.unique_key,
                trace_context=data.get(TRACE_CONTEXT_KEY),
            )
            self.enqueued.append(captured)
            self._waiting.append(captured)
            self._ids.add(job.job_id)
            self._latest[job.job_id] = captured
            codes.append(WRITTEN)
        return codes

    def job(self, app: Core, job: Prepared) -> Job:
        """The handle ``enqueue()`` returns for a captured job."""
        return CapturedJobHandle(self._latest[job.job_id])

    async def _lock(self, app: Core, job: Prepared) -> bool:
        """Take the job's uniqueness lock in Redis, as the enqueue script does."""
        name = job.unique_key.split(":")[2] if job.unique_key else "?"
        if app.settings.redis_url is None:
            raise ConfigurationError(
                f"job {name!r} is unique (unique_for), and under capture() its uniqueness "
                "lock is still taken in Redis: set ASYNCJOBS_REDIS_URL (the pytest fixture "
                "asyncjobs_services provides one)"
            )
        redis = await app.redis()
        try:
            taken = await redis.set(job.unique_key or "", job.job_id, nx=True, px=job.unique_ms)
        except REDIS_UNAVAILABLE as exc:
            raise RedisUnavailableError(
                f"Redis is unreachable ({type(exc).__name__}: {exc}); the uniqueness lock of "
                f"job {name!r} could not be taken, and the job was not captured"
            ) from exc
        return bool(taken)

    # -- assertions ---------------------------------------------------------------------------

    def of(self, job: Any) -> list[CapturedJob]:
        """The captured jobs of ``job`` (a decorated job, its spec or its name), in order."""
        name = _job_name(job)
        return [c for c in self.enqueued if c.name == name]

    def assert_enqueued(self, job: Any, /, *args: Any, **kwargs: Any) -> CapturedJob:
        """The first captured ``job`` called with exactly ``args`` and ``kwargs``, or an
        ``AssertionError`` listing what was captured. With no arguments given, any call of
        ``job`` matches. Arguments are compared as the job receives them (through JSON), so
        a tuple matches the list it becomes; ``unittest.mock.ANY`` matches anything."""
        found = self._matching(job, args, kwargs)
        if not found:
            wanted = _call(_job_name(job), args, kwargs) if args or kwargs else _job_name(job)
            raise AssertionError(f"expected {wanted} to be enqueued; {self._summary()}")
        return found[0]

    def assert_not_enqueued(self, job: Any, /, *args: Any, **kwargs: Any) -> None:
        """``AssertionError`` if ``job`` was captured (with these arguments, if given)."""
        found = self._matching(job, args, kwargs)
        if found:
            shown = ", ".join(c.call() for c in found[:5])
            raise AssertionError(f"expected no {_job_name(job)} to be enqueued; found {shown}")

    def _matching(
        self, job: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[CapturedJob]:
        of = self.of(job)
        if not args and not kwargs:
            return of
        want_args = _as_sent(args)
        want_kwargs = dict(zip(kwargs, _as_sent(kwargs.values()), strict=True))
        return [c for c in of if c.args == want_args and c.kwargs == want_kwargs]

    def _summary(self) -> str:
        if not self.enqueued:
            return "nothing was enqueued"
        shown = ", ".join(c.call() for c in self.enqueued[:10])
        more = f" and {len(self.enqueued) - 10} more" if len(self.enqueued) > 10 else ""
        return f"enqueued: {shown}{more}"

    # -- running ------------------------------------------------------------------------------

    async def run_all(
        self, *, retries: bool = True, limit: int = DEFAULT_LIMIT
    ) -> list[CapturedJob]:
        """Run every captured job that waits, and those they enqueue, until none is left.

        Returns the jobs run, in the order they finished. Raises a job's own exception when
        it fails for good (with a note naming it), and :class:`RunLimitError` after
        ``limit`` runs with jobs still waiting.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a whole number from 1, not {limit!r}")
        finished: list[CapturedJob] = []
        runs: Counter[str] = Counter()
        while self._waiting:
            if runs.total() >= limit:
                raise RunLimitError(self._limit_message(limit, runs))
            job = self._waiting.popleft()
            runs[job.name] += 1
            if await self._run(job, retries):
                finished.append(job)
        return finished

    async def _run(self, job: CapturedJob, retries: bool) -> bool:
        """One try of ``job``; True when it is done, False when it waits for another try."""
        app = job.app
        if not isinstance(app, App):  # pragma: no cover - enqueue passes the App it was called on
            raise AsyncJobsError(f"job {job.call()} was enqueued through {app!r}, not an App")
        spec = app.registry.get(job.name)
        if not retries:
            spec = dataclasses.replace(spec, max_tries=1)
        job.tries += 1
        ctx: JobContext = {
            "asyncjobs": app,
            "job_id": job.job_id,
            "job_try": job.tries,
            "enqueue_time": job.enqueue_time,
            "score": job.score,
            "queue_name": job.queue,
        }
        if job.trace_context is not None:  # for tracing's execution layer, as in a worker
            ctx["trace_context"] = job.trace_context
        if app.settings.redis_url is not None:
            ctx["redis"] = await app.redis()
        request = ExecutionRequest(app, spec, ctx, job.args, dict(job.kwargs))
        try:
            job.result = await execution_chain(spec, app)(request)
        except Retry:  # the execution path chose another try: run it at once, at the back
            self._waiting.append(job)
            return False
        except Exception as exc:
            job.status, job.error = "failed", exc
            self._ids.discard(job.job_id)
            exc.add_note(
                f"asyncjobs: raised by job {job.call()} (id {job.job_id}, try {job.tries}) "
                "in capture().run_all(); it failed for good"
            )
            raise
        job.status = "skipped" if request.skipped else "succeeded"
        self._ids.discard(job.job_id)
        return True

    def _limit_message(self, limit: int, runs: Counter[str]) -> str:
        waiting = Counter(job.name for job in self._waiting)
        ran = ", ".join(f"{name} ×{count:,}" for name, count in runs.most_common(3))
        left = ", ".join(f"{name} ×{count:,}" for name, count in waiting.most_common(3))
        return (
            f"run_all() stopped after {limit:,} job runs (its limit) with {len(self._waiting):,} "
            f"job(s) still waiting ({left}); it ran {ran}. A job that enqueues itself (or "
            "another) without end? If the work really is that large, pass run_all(limit=N)."
        )

    # -- in force -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        DIVERSIONS.append(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self in DIVERSIONS:
            DIVERSIONS.remove(self)


def capture() -> Capture:
    """A :class:`Capture`: ``async with capture() as jobs:`` (see :mod:`asyncjobs._capture`)."""
    return Capture()


def _job_name(job: Any) -> str:
    if isinstance(job, str):
        return job
    spec = job if isinstance(job, JobSpec) else getattr(job, SPEC_ATTRIBUTE, None)
    if isinstance(spec, JobSpec):
        return spec.name
    raise TypeError(f"{job!r} is not a job: pass a function decorated with @job, or a job name")


def _as_sent(values: Iterable[Any]) -> tuple[Any, ...]:
    """Each value as the job receives it, through JSON; one JSON cannot hold (a matcher
    such as ``mock.ANY``) is compared as it is."""
    out = []
    for value in values:
        try:
            out.append(json.loads(json.dumps(value)))
        except (TypeError, ValueError):
            out.append(value)
    return tuple(out)


def _call(name: str, args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"
