"""Self-healing reconcilers: scheduled jobs that re-enqueue the work still pending in PostgreSQL.

State lives in the database; a reconciler finds the rows whose work is not
done and enqueues their jobs again, so losing every key in Redis loses no
work. Declare one on an async function that returns the query::

    @asyncjobs.reconciler(job=create_database, every=timedelta(minutes=1))
    async def pending_databases(ctx):
        return "SELECT id FROM databases WHERE state = 'pending'"

Each selected row becomes one job; by default the row's columns, in order,
are the job's positional arguments (``args=`` maps a row yourself, returning a
tuple or :class:`asyncjobs.Args`). The function may also return ``(sql,
params)`` for ``$1``-style parameters.

A run streams the rows with a server-side cursor in a read-only transaction
(memory stays flat however many rows) and enqueues through ``enqueue_stream``,
1,000 jobs per Redis round trip, so the kill switch applies to every job. Job
ids are derived from the job name and its arguments (:func:`stable_job_id`): a
job still queued, deferred or running is not queued twice, and one that
finished or failed (its key gone, as results are not kept) is queued again on
the next run while its row is still pending.

The reconciler is itself a job named after the function, run by arq's cron in
every worker (``asyncjobs.WorkerSettings`` registers it): arq enqueues each
period's run under one id, so it runs once per period however many workers
there are, and the flag ``disable_<reconciler name>`` stops it. Each run logs
``reconciler.finished`` with its counts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from . import _logs as logs
from ._arq import CronJob, arq_cron
from ._bulk import Args, BulkStats, enqueue_stream
from ._exceptions import JobDefinitionError
from ._jobs import JobSpec, Registry, build_spec, default_registry, to_seconds
from ._naming import stable_digest

if TYPE_CHECKING:
    from ._core import Core, JobContext

_log = structlog.get_logger("asyncjobs.reconcilers")

LAST_RUN_PREFIX = "asyncjobs:reconciler:"
"""``asyncjobs:reconciler:<name>``: the last finished run (a hash: at, rows, enqueued,
duplicates, rejected, duration_ms), for the dashboard; kept a week."""
LAST_RUN_TTL_S = 7 * 86400

QueryFunction = Callable[[Any], Awaitable[Any]]
"""``async def query(ctx)``: ``ctx`` is the job's :class:`~asyncjobs._core.JobContext`."""


def stable_job_id(job_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``<job>:<32 hex>``: a BLAKE2b-128 digest of the arguments as sorted JSON.

    The same job and arguments give the same id in every process and Python
    version (no use of ``hash()``); values JSON cannot carry are hashed as ``str()``.
    """
    return f"{job_name}:{stable_digest([args, kwargs]).hex()}"


def schedule_from_every(every: timedelta) -> dict[str, Any]:
    """arq ``cron()`` fields that fire every ``every``, aligned to the clock.

    ``every`` must divide a minute (whole seconds), an hour (whole minutes) or a
    day (whole hours) evenly, e.g. 5 s, 1 min, 15 min, 6 h; use ``cron=`` otherwise.
    """
    seconds = every.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise JobDefinitionError(f"every={every!r} must be a positive number of whole seconds")
    s = int(seconds)
    if s < 60 and 60 % s == 0:
        return {"second": set(range(0, 60, s))}
    if s % 60 == 0 and s < 3600 and 3600 % s == 0:
        return {"minute": set(range(0, 60, s // 60)), "second": 0}
    if s % 3600 == 0 and s <= 86400 and 86400 % s == 0:
        return {"hour": set(range(0, 24, s // 3600)), "minute": 0, "second": 0}
    raise JobDefinitionError(
        f"every={every!r} does not divide a minute, an hour or a day evenly; "
        "pass cron={'minute': {...}, ...} with arq's cron() fields instead"
    )


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What one run did."""

    name: str
    rows: int
    enqueued: int
    duplicates: int
    rejected: int
    duration_ms: float


@dataclass(slots=True, eq=False)
class Reconciler:
    """A declared reconciler: which job, how to find its pending rows, when to run."""

    name: str
    job: Any
    query: QueryFunction
    schedule: dict[str, Any]
    period_s: float | None = None
    args: Callable[[Any], Any] | None = None
    jitter: float | None = None
    batch_size: int = 1000
    spec: JobSpec = field(init=False)

    @property
    def flag(self) -> str:
        """The flag that stops this reconciler."""
        return self.spec.flag

    def describe_schedule(self) -> str:
        """The schedule, for people."""
        if self.period_s is not None:
            return f"every {timedelta(seconds=self.period_s)}"
        return "cron " + ", ".join(f"{k}={v}" for k, v in sorted(self.schedule.items()))

    def job_args(self, row: Any) -> Args:
        """The job's arguments for ``row``, with its stable ``_job_id``."""
        return self._row_mapper()(row)

    def _row_mapper(self) -> Callable[[Any], Args]:
        job_name = self.job_name
        mapper = self.args
        if mapper is None:
            # The default mapping (the row's columns): the hot path of a large run.
            def default(row: Any) -> Args:
                args = tuple(row.values())
                return Args.of(args, {"_job_id": stable_job_id(job_name, args, {})})

            return default

        def custom(row: Any) -> Args:
            made = mapper(row)
            if isinstance(made, Args):
                args, kwargs = made.args, dict(made.kwargs)
            elif isinstance(made, tuple):
                args, kwargs = made, {}
            else:
                args, kwargs = (made,), {}
            plain = {k: v for k, v in kwargs.items() if not k.startswith("_")}
            kwargs.setdefault("_job_id", stable_job_id(job_name, args, plain))
            return Args.of(args, kwargs)

        return custom

    @property
    def job_name(self) -> str:
        """The name of the job this reconciler enqueues."""
        return str(self.job if isinstance(self.job, str) else self.job.__asyncjobs_job__.name)

    async def run(self, app: Core, ctx: JobContext | None = None) -> ReconcileResult:
        """Run once: stream the pending rows and enqueue their jobs; returns the counts."""
        start = time.perf_counter()
        stats = BulkStats()
        try:
            rows = await self._run(app, {} if ctx is None else ctx, stats)
        except Exception as exc:
            _log.error(
                logs.RECONCILER_FAILED,
                reconciler=self.name,
                job=self.job_name,
                error=f"{type(exc).__name__}: {exc}",
                enqueued=stats.written,
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
            )
            raise
        result = ReconcileResult(
            name=self.name,
            rows=rows,
            enqueued=stats.written,
            duplicates=stats.duplicates,
            rejected=stats.rejected,
            duration_ms=round((time.perf_counter() - start) * 1000, 3),
        )
        app.instruments.reconciled(self.name, result.rows, result.enqueued)
        await _remember(app, result)
        _log.info(
            logs.RECONCILER_FINISHED,
            reconciler=self.name,
            job=self.job_name,
            rows=result.rows,
            enqueued=result.enqueued,
            duplicates=result.duplicates,
            rejected=result.rejected,
            duration_ms=result.duration_ms,
        )
        return result

    async def _run(self, app: Core, ctx: JobContext, stats: BulkStats) -> int:
        made = await self.query(ctx)
        if isinstance(made, str):
            sql, params = made, ()
        elif isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], str):
            sql, params = made[0], tuple(made[1])
        else:
            raise TypeError(
                f"reconciler {self.name!r} must return its SQL as a string or (sql, params), "
                f"not {made!r}"
            )
        rows = 0
        options: dict[str, Any] = {}
        if self.jitter:
            options["_jitter"] = self.jitter
        pool = await app.db()
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = conn.cursor(sql, *params, prefetch=self.batch_size)
            job_args = self._row_mapper()

            async def items() -> Any:
                nonlocal rows
                async for row in cursor:
                    rows += 1
                    yield job_args(row)

            async for _ in enqueue_stream(
                app, self.job, items(), batch_size=self.batch_size, stats=stats, **options
            ):
                pass
        return rows

    def cron_job(self, coroutine: Any, timeout: float) -> CronJob:
        """The arq CronJob that runs ``coroutine`` (the executor of this reconciler's job)."""
        # Results of a run are kept for a while so that another worker's enqueue of the
        # same period (same job id) is refused: arq's cron ids are unique per run time.
        keep = max(60.0, 2 * (self.period_s or 3600.0))
        return arq_cron(
            coroutine, name=self.name, keep_result=keep, timeout=timeout, **self.schedule
        )


async def _remember(app: Core, result: ReconcileResult) -> None:
    """Keep the run's numbers for the dashboard; best effort (the run is done either way)."""
    key = LAST_RUN_PREFIX + result.name
    fields = {
        "at": f"{time.time():.3f}",
        "rows": result.rows,
        "enqueued": result.enqueued,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
        "duration_ms": result.duration_ms,
    }
    try:
        redis = await app.redis()
        pipe = redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, LAST_RUN_TTL_S)
        await pipe.execute()
    except Exception as exc:  # Redis went away after the run: the log line has the numbers
        _log.warning(logs.RECONCILER_FINISHED, reconciler=result.name, not_kept=repr(exc))


async def last_runs(app: Core, names: list[str]) -> dict[str, dict[str, float]]:
    """The last finished run of each of ``names`` that ran in the last week, by name."""
    if not names:
        return {}
    redis = await app.redis()
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(LAST_RUN_PREFIX + name)
    found = {}
    for name, raw in zip(names, await pipe.execute(), strict=True):
        if raw:
            found[name] = {
                (k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()
            }
    return found


class ReconcilerRegistry:
    """Reconcilers by name."""

    def __init__(self) -> None:
        self._items: dict[str, Reconciler] = {}

    def add(self, rec: Reconciler) -> Reconciler:
        existing = self._items.get(rec.name)
        if existing is not None and existing.spec.origin != rec.spec.origin:
            raise JobDefinitionError(f"a reconciler named {rec.name!r} exists already")
        self._items[rec.name] = rec
        return rec

    def get(self, name: str) -> Reconciler:
        try:
            return self._items[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            known = ", ".join(sorted(self._items)) or "none"
            raise JobDefinitionError(
                f"no reconciler named {name!r}.{hint} Reconcilers: {known}"
            ) from None

    def __iter__(self) -> Any:
        return iter(sorted(self._items.values(), key=lambda r: r.name))

    def __len__(self) -> int:
        return len(self._items)


default_reconcilers = ReconcilerRegistry()


def reconciler(
    *,
    job: Any,
    every: timedelta | float | None = None,
    cron: dict[str, Any] | None = None,
    args: Callable[[Any], Any] | None = None,
    jitter: timedelta | float | None = None,
    name: str | None = None,
    batch_size: int = 1000,
    registry: Registry | None = None,
    reconcilers: ReconcilerRegistry | None = None,
) -> Callable[[QueryFunction], QueryFunction]:
    """Declare a reconciler on an async function returning its SQL (see the module docstring).

    ``every`` (a timedelta or seconds) or ``cron`` (arq ``cron()`` fields) sets
    the schedule; ``jitter`` spreads the enqueued jobs over a window.
    """
    if (every is None) == (cron is None):
        raise JobDefinitionError("a reconciler needs exactly one of every= or cron=")
    if every is not None:
        period = timedelta(seconds=every) if not isinstance(every, timedelta) else every
        schedule, period_s = schedule_from_every(period), period.total_seconds()
    else:
        schedule, period_s = dict(cron or {}), None

    def decorate(fn: QueryFunction) -> QueryFunction:
        rec = Reconciler(
            name=name or fn.__name__,
            job=job,
            query=fn,
            schedule=schedule,
            period_s=period_s,
            args=args,
            jitter=to_seconds(jitter, "jitter"),
            batch_size=batch_size,
        )

        async def run_reconciler(ctx: JobContext) -> dict[str, Any]:
            result = await rec.run(ctx["asyncjobs"], ctx)
            return {"rows": result.rows, "enqueued": result.enqueued}

        run_reconciler.__qualname__ = fn.__qualname__
        run_reconciler.__module__ = fn.__module__
        run_reconciler.__name__ = rec.name
        # A failed run is not retried: the next period runs it again (reconciler.failed).
        rec.spec = build_spec(run_reconciler, name=rec.name, max_tries=1)
        (registry if registry is not None else default_registry).add(rec.spec)
        (reconcilers if reconcilers is not None else default_reconcilers).add(rec)
        fn.__asyncjobs_reconciler__ = rec  # type: ignore[attr-defined]
        return fn

    return decorate
