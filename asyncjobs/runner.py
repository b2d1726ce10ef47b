"""asyncjobs' own worker loop, on arq's Redis format.

Why a loop of our own rather than an ``arq.worker.Worker`` subclass: arq's
command builds arq's own ``Worker`` class from the settings it reads, so a
subclass would never be started by ``arq asyncjobs.WorkerSettings``; and
what had to change (claiming and finishing in batches, liveness, the
graceful stop, reading many queues, keeping what cannot run) is most of
arq's ``Worker``. So ``arq asyncjobs.WorkerSettings`` still starts arq's
``Worker``, whose start-up hook runs this loop for the worker's whole life
and then ends arq's main task (see :mod:`asyncjobs._worker`). The format in
Redis is arq's, key for key (:mod:`asyncjobs._claim`), so arq's ``Job`` API
reads what this loop writes and arq's own worker can share a queue with it.

What it runs and how a run's end is recorded live in :mod:`asyncjobs._runnables`.
The loop: claim up to the free slots' worth of ready jobs in one Lua call,
start each as a task, collect outcomes and write them back in one Lua call
per batch; when the queues are empty, block on the wake-up lists (polling
every ``ASYNCJOBS_POLL_DELAY`` at most). A heartbeat task renews the
worker's registration and hands dead workers' jobs back, and a keepalive thread
renews its expiry while the loop is blocked (:mod:`asyncjobs._liveness`); a cron
task enqueues the runs of the reconcilers and of the scheduled jobs
(:mod:`asyncjobs._schedule`); with PostgreSQL configured, a relay moves committed
transactional enqueues to Redis (:mod:`asyncjobs._outbox`).

Stopping: SIGTERM or SIGINT stops claiming, lets running jobs finish for up
to ``ASYNCJOBS_SHUTDOWN_GRACE`` seconds, then cancels the rest and hands them
back to their queues at once (the try not counted), logging
``worker.stopping`` and ``job.requeued``. A second signal cancels at once.

Incident controls (:mod:`asyncjobs._controls`): before each claim the loop reads the
flag store's snapshot of paused queues and throttles (no I/O). A paused queue is
simply not claimed from (nor waited on); while a job class is throttled, what a
claim took of that class passes through the shared limiter, and what is over the
rate goes back to its queue, deferred, its try not counted. A change wakes the
loop as soon as the flag store has loaded it.

A payload that names no job this worker knows, is not a JSON job payload, or
whose arguments do not fit the job's signature is never run: it goes to the
dead letters (reason ``unknown_job``, ``bad_payload``, ``bad_arguments``) with
the raw payload, and leaves the queue. Nothing is executed from a payload
that is not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import structlog

from . import _logs as logs
from . import _throughput as throughput
from ._app import App
from ._arq import (
    ABORT_SET,
    EXPIRES_EXTRA_MS,
    RETRY_PREFIX,
    ArqRedis,
    AsyncScript,
    CronJob,
    ReconnectingRetry,
    Redis,
    Retry,
    blocking_client,
    ms_to_datetime,
    once_client,
    timestamp_ms,
    to_unix_ms,
    worker_redis,
)
from ._cancel import CANCEL_INFO_PREFIX
from ._claim import (
    CLAIM_LUA,
    FINISH_LUA,
    RECOVER_LUA,
    RETRY_KEY_TTL_S,
    WORKERS_KEY,
    Claimed,
    parse_claim,
    wake_key,
)
from ._controls import Controls, Limiter
from ._core import JobContext
from ._enqueue import Prepared, serialize_job, write_prepared
from ._exceptions import ConfigurationError
from ._liveness import (
    MISSED_BEATS,
    Keepalive,
    beat,
    deregister,
    new_worker_id,
    registration,
    worker_jobs_key,
)
from ._metrics_hooks import Health
from ._metrics_server import MetricsServer, open_server
from ._outbox import Relay
from ._pooling import session_needed_message
from ._runnables import (
    JobEnd,
    Record,
    Runnable,
    decode_payload,
    default_queues,
    runnables,
)
from ._schedule import ScheduledRun
from ._uniqueness import release, unique_key

_log = structlog.get_logger("asyncjobs.worker")

Hook = Callable[[dict[str, Any]], Awaitable[Any]]

CLAIM_MAX = 1000
"""The most jobs one claim call takes, however many slots are free."""
CLAIM_TIMEOUT_S = 10.0
"""A claim unanswered this long is taken for lost (its jobs are handed back)."""
SCAN_MAX = 10_000
"""The queue entries one claim looks at per queue before it counts the jobs the fleet holds
(running jobs stay in the queue, so a claim steps over them): past it, a claim that still
wants jobs reaches past as many entries as the registered workers hold, so more than this
many running jobs of one queue slow a claim but never stall it."""
ABORT_CHECK_S = 0.25
"""How often a worker looks in arq's abort set for running jobs to cancel."""
DEAD_LETTER_LATER_S = 60.0
"""A job that should go to the dead letters while PostgreSQL is down waits this long."""


class Worker:
    """One worker process's loop. ``await Worker(app).run()`` until a signal (or, with
    ``burst=True``, until the queues are empty).

    Options default to ``app.settings`` (``ASYNCJOBS_*``). ``redis`` is a client to use
    (and not close); by default the worker opens its own. ``ctx`` is the dict every job's
    context starts from; ``on_startup``/``on_shutdown`` receive it.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        max_jobs: int | None = None,
        poll_delay: float | None = None,
        heartbeat: float | None = None,
        shutdown_grace: float | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        redis: ArqRedis | None = None,
        retry: ReconnectingRetry | None = None,
        ctx: dict[str, Any] | None = None,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
        extra_cron: Sequence[CronJob] = (),
        metrics: MetricsServer | None = None,
    ) -> None:
        settings = app.settings
        self.app = app
        self.queues = tuple(queues) if queues else default_queues(app)
        self.max_jobs = max_jobs if max_jobs is not None else settings.max_jobs
        self.poll_delay = poll_delay if poll_delay is not None else settings.poll_delay
        self.heartbeat = heartbeat if heartbeat is not None else settings.heartbeat
        self.shutdown_grace = (
            shutdown_grace if shutdown_grace is not None else settings.shutdown_grace
        )
        self.burst = burst
        self.handle_signals = handle_signals
        self.functions = runnables(app, extra_cron)
        self.cron_jobs = [r.cron for r in self.functions.values() if r.cron is not None]
        self.id = new_worker_id()
        self.ctx: dict[str, Any] = ctx if ctx is not None else {}
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.jobs_complete = self.jobs_failed = self.jobs_retried = self.jobs_cancelled = 0
        self._counted = (0, 0)  # of jobs_complete, jobs_failed + jobs_retried: in Redis
        self._redis = redis
        self._own_redis = redis is None
        self._retry = retry if retry is not None else ReconnectingRetry()
        timeouts = [r.timeout_s for r in self.functions.values()]
        # As arq: the job's timeout (the wrapper's, plus arq's one-second backstop) + 10 s.
        self._in_progress_ms = round((max(timeouts, default=settings.job_timeout) + 11) * 1000)
        self._jobs_key = worker_jobs_key(self.id)
        self._wake_keys = [wake_key(q) for q in self.queues]
        self._running: dict[str, asyncio.Task[None]] = {}
        self._aborting: set[str] = set()
        self._names: dict[str, tuple[str, int]] = {}  # running job id -> (job name, try)
        self._since: dict[str, float] = {}  # running job id -> when it started (Unix s)
        self._pending: list[Record] = []
        self._flush_lock = asyncio.Lock()
        self._have_pending = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._wake = asyncio.Event()
        self._started = time.time()
        self._rotation = 0
        self._paused: frozenset[str] = frozenset()  # of this worker's queues, as last seen
        self._limiter: Limiter | None = None
        self._claim_failed = False
        self._claim_redis: Redis | None = None
        self._flushing: set[str] = set()  # ids of the outcomes being written now
        self._scripts: dict[str, AsyncScript] = {}
        self._background: list[asyncio.Task[Any]] = []
        self._keepalive: Keepalive | None = None
        self._metrics = metrics
        # /healthz's window: the registration's lifetime (three heartbeats).
        window = max(self.heartbeat, self.poll_delay) * MISSED_BEATS
        self.health = Health(window, self._stop.is_set, lambda: self._retry.outage_since)

    # -- life --------------------------------------------------------------

    @property
    def redis(self) -> ArqRedis:
        """The worker's Redis client (open once :meth:`run` has started)."""
        assert self._redis is not None, "the worker has not started"
        return self._redis

    async def run(self) -> None:
        """Run until stopped; hand back what could not finish, deregister, close."""
        self._retry.main_task = asyncio.current_task()
        if self._redis is None:
            self._redis = await worker_redis(self.app.settings, self._retry)
        self.ctx.setdefault("redis", self._redis)
        self.ctx["asyncjobs"] = self.app
        self._claim_redis = once_client(self.app.settings)
        self._scripts = {
            "claim": self._claim_redis.register_script(CLAIM_LUA),
            "finish": self._redis.register_script(FINISH_LUA),
            "recover": self._redis.register_script(RECOVER_LUA),
        }
        self._limiter = Limiter(self._claim_redis, self.id, self._jobs_key)
        if self.handle_signals:
            self._install_signal_handlers()
        try:
            if self._metrics is None and self.app.settings.metrics_port is not None:
                self._metrics = open_server(self.app)  # a ConfigurationError says what to fix
            if self._metrics is not None:
                self._metrics.attach(self.health)
            await self._beat(first=True)
            self._start_keepalive()
            # Once, bounded by ASYNCJOBS_FLAG_TIMEOUT: a worker started during an incident
            # must not run a paused queue's jobs before it has read the pauses.
            await self.app.flags.controls()
            self.app.flags.watch(self._wake.set)
            if self.on_startup is not None:
                await self.on_startup(self.ctx)
            self._background = [
                asyncio.create_task(self._flush_loop(), name="asyncjobs.flush"),
                asyncio.create_task(self._heartbeat_loop(), name="asyncjobs.heartbeat"),
            ]
            self._background.append(asyncio.create_task(self._abort_loop(), name="asyncjobs.abort"))
            if self.cron_jobs:
                cron = asyncio.create_task(self._cron_loop(), name="asyncjobs.cron")
                self._background.append(cron)
            if self.app.settings.database_url is not None:  # transactional enqueues' relay
                self._background.append(
                    asyncio.create_task(Relay(self.app).run(), name="asyncjobs.outbox")
                )
            _log.info(
                logs.WORKER_STARTED,
                worker_id=self.id,
                queues=list(self.queues),
                jobs=sorted(self.functions),
                max_jobs=self.max_jobs,
                heartbeat_s=self.heartbeat,
                shutdown_grace_s=self.shutdown_grace,
            )
            self._warn_about_pools()
            await self._claim_loop()
        finally:
            await self._shut_down()

    def _warn_about_pools(self) -> None:
        settings = self.app.settings
        if settings.database_url is None:
            return
        # Say at start, not at the first job, that PostgreSQL is unreachable (the App logs
        # database.unavailable); jobs that do not need it run meanwhile.
        self._background.append(asyncio.create_task(self._check_database()))
        if self.max_jobs <= settings.database_pool_size:
            return
        # With both defaults (500 jobs, 10 connections: the README says so) it is said at
        # info, not as a warning every new user sees at every start; chosen numbers warn.
        fields = {f.name: f.default for f in dataclasses.fields(settings)}
        defaults = (self.max_jobs, settings.database_pool_size) == (
            fields["max_jobs"],
            fields["database_pool_size"],
        )
        (_log.info if defaults else _log.warning)(
            logs.DATABASE_POOL_SMALL,
            max_jobs=self.max_jobs,
            database_pool_size=settings.database_pool_size,
            hint="more jobs can run at once than the PostgreSQL pool has connections: jobs "
            "that use ctx['asyncjobs'].db() wait for one, and a job that holds one while it "
            "asks for a second can stall; raise ASYNCJOBS_DATABASE_POOL_SIZE (within the "
            "server's max_connections) or lower ASYNCJOBS_MAX_JOBS",
        )

    async def _check_database(self) -> None:
        with contextlib.suppress(Exception):
            await self.app.db()
            exclusive = [
                spec.name
                for spec in self.app.registry
                if (spec.lock is not None or spec.exclusive) and spec.name in self.functions
            ]
            problem = await self._session_problem(exclusive) if exclusive else None
            if problem is not None:
                # Said at start; each such job is refused with the same words when it runs.
                _log.error(logs.WORKER_MISCONFIGURED, error=problem, refused=exclusive)

    async def _session_problem(self, exclusive: list[str]) -> str | None:
        """Why exclusive jobs would be refused (no PostgreSQL session for their locks), or
        ``None``."""
        try:
            if await self.app.session_url("exclusive jobs' locks") is None:
                return session_needed_message(f"exclusive jobs ({', '.join(exclusive)})")
        except ConfigurationError as exc:
            return str(exc)
        return None

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming and wind down (as on SIGTERM); ``now=True`` as on a second signal."""
        if self._stop.is_set() or now:
            self._force.set()
        self._stop.set()
        self._slot_free.set()
        self._wake.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        second = self._stop.is_set()
        _log.info(
            logs.WORKER_STOPPING,
            worker_id=self.id,
            signal=sig.name,
            running=len(self._running),
            grace_s=0 if second else self.shutdown_grace,
            immediate=second,
        )
        self.stop(now=second)

    async def _shut_down(self) -> None:
        self._stop.set()
        if self._running and not self._force.is_set():
            force = asyncio.create_task(self._force.wait())
            await _wait_all_or(list(self._running.values()), force, self.shutdown_grace)
            force.cancel()
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        # Bounded: if Redis is unreachable now, the registration expires and another
        # worker hands back what is still held here (counted as a try).
        bound = max(5.0, self.heartbeat * MISSED_BEATS)
        try:
            async with asyncio.timeout(bound):
                await self._drain_pending()
                # A job claimed but cancelled before its task first ran has no outcome:
                # whatever this worker still holds in Redis goes back too.
                await self._release_lost_claims(reason="stopping")
                await self._drain_pending()
        except TimeoutError:
            _log.error(
                logs.WORKER_FINISH_FAILED,
                worker_id=self.id,
                error=f"outcomes not written within {bound}s",
                unwritten=len(self._pending),
            )
        self.app.flags.unwatch(self._wake.set)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._stop_keepalive()
        try:
            async with asyncio.timeout(bound):
                await self._count_finished()
                if not self._pending:
                    await deregister(self.redis, self.id)
        except Exception as exc:  # Redis is gone: the registration expires by itself
            _log.warning(logs.WORKER_DEREGISTER_FAILED, worker_id=self.id, error=repr(exc))
        if self.on_shutdown is not None:
            try:
                await self.on_shutdown(self.ctx)
            except Exception as exc:
                _log.error(logs.HOOK_FAILED, hook="on_shutdown", error=repr(exc), exc_info=exc)
        if self._claim_redis is not None:
            await self._claim_redis.aclose(close_connection_pool=True)
        if self._own_redis and self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
        if self._metrics is not None:
            await self._metrics.close()
        _log.info(
            logs.WORKER_STOPPED,
            worker_id=self.id,
            jobs_complete=self.jobs_complete,
            jobs_failed=self.jobs_failed,
            jobs_retried=self.jobs_retried,
            jobs_cancelled=self.jobs_cancelled,
        )

    # -- claiming ----------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self.health.polled_at = time.monotonic()
            free = self.max_jobs - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                self.health.full = True
                await self._slot_free.wait()
                self.health.full = False
                continue
            # Half the slots at most, so that the next claim can be in flight while
            # this batch runs (below).
            want = min(free, CLAIM_MAX, max(1, self.max_jobs // 2))
            controls = self.app.flags.controls_now()
            queues = self._claimable(controls)
            if not queues:  # every queue is paused: wait for a resume (or a stop)
                if self.burst:
                    return
                await self._wait_for_work(queues)
                continue
            try:
                if self._claim_failed:  # before claiming again, in this same task
                    await self._release_lost_claims()
                jobs = await self._claim(want, queues)
                claimed = len(jobs)
                if controls.throttles and jobs:
                    assert self._limiter is not None
                    async with asyncio.timeout(CLAIM_TIMEOUT_S):  # lost: _release_lost_claims
                        jobs = await self._limiter.admit(jobs, controls.throttles)
            except Exception as exc:
                # The claim may have run with its reply lost: what it took is handed back
                # before the next claim (it is never sent twice, see _claim).
                self._claim_failed = True
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    _log.warning(
                        logs.WORKER_CLAIM_FAILED,
                        worker_id=self.id,
                        error=repr(exc),
                        failures=failures,
                    )
                await self._sleep_or_stop(min(1.0, 0.05 * 2**failures))
                continue
            failures = 0
            for job in jobs:
                if job.job_id in self._running:  # claimed again while still running here
                    _log.error(logs.WORKER_ERROR, job_id=job.job_id, error="claimed twice")
                    continue
                task = asyncio.create_task(self._execute(job), name=job.job_id)
                self._running[job.job_id] = task
                self._since[job.job_id] = time.time()
                task.add_done_callback(self._job_done)
            if claimed == want:
                # Claim again before these start: the next claim is in flight, and Redis
                # runs it, while this batch runs here (half the slots at a time, so a
                # claim finds free ones), rather than the two taking turns.
                continue
            if self.burst and await self._burst_done(queues):
                return
            await self._wait_for_work(queues)

    def _claimable(self, controls: Controls) -> tuple[str, ...]:
        """This worker's queues that are not paused; logs when that changes."""
        paused = controls.paused.intersection(self.queues)
        if paused != self._paused:
            _log.info(
                logs.QUEUES_PAUSED,
                worker_id=self.id,
                paused=sorted(paused),
                resumed=sorted(self._paused - paused),
            )
            self._paused = paused
        if not paused:
            return self.queues
        return tuple(q for q in self.queues if q not in paused)

    async def _claim(self, want: int, queues: tuple[str, ...]) -> list[Claimed]:
        """One CLAIM_LUA call, on a connection that never resends it: a resent claim after
        a lost reply would claim a second batch and strand the first."""
        if len(queues) > 1:  # start at a different queue each time, so none starves
            self._rotation = (self._rotation + 1) % len(queues)
            queues = queues[self._rotation :] + queues[: self._rotation]
        async with asyncio.timeout(CLAIM_TIMEOUT_S):  # a frozen Redis: a lost reply
            reply = await self._scripts["claim"](
                keys=[self._jobs_key, *queues],
                args=[timestamp_ms(), want, self._in_progress_ms, self.id, SCAN_MAX],
            )
        return parse_claim(reply)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task.get_name(), None)
        self._names.pop(task.get_name(), None)
        self._since.pop(task.get_name(), None)
        self._aborting.discard(task.get_name())
        self._slot_free.set()

    async def _wait_for_work(self, queues: tuple[str, ...]) -> None:
        """Until a wake-up token of ``queues``, the next poll, a change of the controls, or
        a stop, whichever comes first."""
        if self._wake.is_set():
            self._wake.clear()
            return
        if not queues:  # all paused: the controls' watcher sets _wake on a resume
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(self.poll_delay, 0.5)):
                    await self._wake.wait()
            self._wake.clear()
            return
        keys = self._wake_keys if queues == self.queues else [wake_key(q) for q in queues]
        # redis-py types BLPOP's timeout as whole seconds; Redis takes fractions since 6.0.
        wait: Awaitable[Any] = self.redis.blpop(keys, self.poll_delay)  # type: ignore[arg-type,assignment]
        blpop = asyncio.ensure_future(wait)
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([blpop, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (blpop, woken):
                if not waiter.done():
                    waiter.cancel()
            await asyncio.gather(blpop, woken, return_exceptions=True)
        self._wake.clear()
        if blpop.done() and not blpop.cancelled() and blpop.exception() is not None:
            exc = blpop.exception()
            _log.warning(logs.WORKER_CLAIM_FAILED, worker_id=self.id, error=repr(exc))
            await self._sleep_or_stop(self.poll_delay)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _burst_done(self, queues: tuple[str, ...]) -> bool:
        if self._running:
            return False
        await self._drain_pending()
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:  # a paused queue's jobs do not keep a burst worker going
            pipe.zcard(queue)
        counts: list[int] = await pipe.execute()
        return sum(counts) == 0

    # -- running a job -----------------------------------------------------

    async def _execute(self, job: Claimed) -> None:
        """Run one claimed job and record its outcome (exactly one record per claim)."""
        recorded = False

        def record(rec: Record) -> None:
            nonlocal recorded
            recorded = True
            self._pending.append(rec)
            self._have_pending.set()

        try:
            await self._run_claimed(job, record)
        except asyncio.CancelledError:
            if not recorded:
                self._requeue(job, record)
        except Exception as exc:  # a bug of ours: keep the job, do not lose it
            _log.error(logs.WORKER_ERROR, job_id=job.job_id, error=repr(exc), exc_info=exc)
            if not recorded:
                record(Record("R", job, timestamp_ms() + round(DEAD_LETTER_LATER_S * 1000)))

    def _requeue(self, job: Claimed, record: Callable[[Record], None]) -> None:
        if job.job_id in self._aborting:  # cancelled before the job itself ran: done
            self.jobs_cancelled += 1
            record(Record("F", job))
            return
        name, job_try = self._names.get(job.job_id, (None, job.job_try))
        _log.info(
            logs.JOB_REQUEUED,
            job=name,
            job_id=job.job_id,
            job_try=job_try,
            queue=job.queue,
            worker_id=self.id,
        )
        record(Record("Q", job))

    async def _run_claimed(self, job: Claimed, record: Callable[[Record], None]) -> None:
        if job.payload is None:  # the job key expired before the job ran (as arq: failed)
            _log.warning(logs.JOB_EXPIRED, job_id=job.job_id, queue=job.queue)
            record(Record("F", job))
            return
        decoded = decode_payload(job.payload)
        if isinstance(decoded, str):
            await self._unrunnable(job, record, "bad_payload", decoded)
            return
        name, args, kwargs, enqueue_try, enqueue_ms, trace_context = decoded
        function = self.functions.get(name)
        problem = self._cannot_run(name, function, args, kwargs)
        if problem is not None:
            reason, error = problem
            await self._unrunnable(job, record, reason, error, name=name, args=args, kwargs=kwargs)
            return
        assert function is not None
        job_try = job.job_try
        if enqueue_try is not None and enqueue_try > job_try:
            job_try = enqueue_try
            await self.redis.setex(RETRY_PREFIX + job.job_id, RETRY_KEY_TTL_S, str(job_try))
        if function.max_tries is not None and job_try > function.max_tries:
            await self._unrunnable(
                job,
                record,
                "tries_exhausted",
                f"claimed {job_try} times, more than its max_tries of {function.max_tries} "
                "(its worker stopped or crashed while running it)",
                name=name,
                args=args,
                kwargs=kwargs,
                tries=job_try - 1,
            )
            return
        outcome = JobEnd(job, function, name, args, kwargs, job_try, enqueue_ms)
        self._names[job.job_id] = (name, job_try)
        if job.aborted:  # arq's abort (or a cancel) reached it before it started
            await self._log_cancelled(job.job_id, started=False)
            self.jobs_cancelled += 1
            record(outcome.cancelled())
            await self._free_unique(function, args, kwargs, job.job_id)
            return
        # The worker's ctx (with on_startup's own keys) and this job's: a JobContext.
        ctx: JobContext = {
            **self.ctx,  # type: ignore[typeddict-item]
            "job_id": job.job_id,
            "job_try": job_try,
            "enqueue_time": ms_to_datetime(enqueue_ms),
            "score": job.score,
            "queue_name": job.queue,
        }
        if trace_context is not None:  # for tracing's execution layer, if it is on
            ctx["trace_context"] = trace_context
        meter = self.app.instruments.job(name)
        start = meter.started(job.queue, enqueue_ms, job_try)
        try:
            result = await function.run(ctx, *args, **kwargs)
        except Retry as exc:
            meter.retrying(exc, start)
            self.jobs_retried += 1
            record(Record("R", job, timestamp_ms() + (exc.defer_score or 0)))
            return
        except asyncio.CancelledError:
            if job.job_id not in self._aborting:
                raise  # a shutdown: _execute hands the job back
            self._aborting.discard(job.job_id)
            self.jobs_cancelled += 1
            record(outcome.cancelled())
            await self._free_unique(function, args, kwargs, job.job_id)
            return
        except Exception as exc:  # the wrapper logged it and wrote any dead letter
            meter.failed(exc, start, dead=function.cron is None)  # cron jobs have none
            self.jobs_failed += 1
            record(outcome.finished(False, exc))
            return
        finally:
            meter.ended(job.queue)
        meter.succeeded(job.job_id, start)
        self.jobs_complete += 1
        record(outcome.finished(True, result))

    def _cannot_run(
        self, name: str, function: Runnable | None, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[str, str] | None:
        """(reason, error) when the payload names no job here or its arguments do not fit."""
        if function is None:
            return "unknown_job", f"no job named {name!r} is registered in this worker"
        if function.spec is not None and function.cron is None:
            try:
                function.spec.bind(tuple(args), kwargs)
            except TypeError as exc:
                signature = function.spec.signature
                return "bad_arguments", f"arguments do not fit job {name!r}{signature}: {exc}"
        return None

    async def _unrunnable(
        self,
        job: Claimed,
        record: Callable[[Record], None],
        reason: str,
        error: str,
        *,
        name: str | None = None,
        args: Any = None,
        kwargs: Any = None,
        tries: int | None = None,
    ) -> None:
        """Move a job that cannot run to the dead letters, raw payload and all; if the
        dead letters cannot be written, leave it queued and try again later."""
        assert job.payload is not None
        about = {"job": name, "job_id": job.job_id, "queue": job.queue, "reason": reason}
        try:
            dead_id = await self.app.dead.record_unrunnable(
                reason=reason,
                job_name=name or "?",
                job_id=job.job_id,
                queue=job.queue,
                payload=job.payload,
                args=args,
                kwargs=kwargs,
                tries=job.job_try if tries is None else tries,
                error=error,
            )
        except Exception as exc:
            _log.error(
                logs.JOB_DEAD_LETTER_FAILED,
                **about,
                error=error,
                store_error=f"{type(exc).__name__}: {exc}",
                retry_in_s=DEAD_LETTER_LATER_S,
            )
            record(Record("R", job, timestamp_ms() + round(DEAD_LETTER_LATER_S * 1000)))
            return
        self.jobs_failed += 1
        known = name if name is not None and name in self.functions else "?"
        self.app.instruments.job(known).dead()
        _log.error(logs.JOB_DEAD, **about, dead_letter_id=dead_id, error=error)
        if name is not None and name in self.functions and isinstance(args, list):
            await self._free_unique(self.functions[name], args, kwargs, job.job_id)
        record(Record("F", job))

    async def _free_unique(
        self, function: Runnable, args: list[Any], kwargs: Any, job_id: str
    ) -> None:
        """A job that ends without running (dead, cancelled) frees its uniqueness lock."""
        spec = function.spec
        if spec is None or spec.unique_for is None or not isinstance(kwargs, dict):
            return
        with contextlib.suppress(Exception):  # best effort: the lock's TTL bounds it anyway
            lock = unique_key(spec, tuple(args), kwargs)
            if lock is not None:
                await release(self.redis, lock, job_id)

    # -- cancelling ----------------------------------------------------------

    async def _abort_loop(self) -> None:
        """Cancel running jobs named in arq's abort set (``cancel()``, arq's ``abort()``)."""
        while True:
            await asyncio.sleep(ABORT_CHECK_S)
            if not self._running:
                continue
            try:
                ids = await self.redis.zrange(ABORT_SET, 0, -1)
                mine = [i.decode() for i in ids if i.decode() in self._running]
                if mine:
                    await self.redis.zrem(ABORT_SET, *mine)
            except Exception as exc:
                _log.warning(logs.WORKER_CLAIM_FAILED, worker_id=self.id, error=repr(exc))
                continue
            cancelled = []
            for job_id in mine:
                task = self._running.get(job_id)
                if task is not None and not task.done():
                    self._aborting.add(job_id)
                    task.cancel()  # at once: the task must not finish in between
                    cancelled.append(job_id)
            for job_id in cancelled:
                await self._log_cancelled(job_id, started=True)

    async def _log_cancelled(self, job_id: str, *, started: bool) -> None:
        who: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            raw = await self.redis.get(CANCEL_INFO_PREFIX + job_id)
            who = json.loads(raw) if raw else {}
        name, job_try = self._names.get(job_id, (None, None))
        _log.info(
            logs.JOB_CANCELLED,
            job=name,
            job_id=job_id,
            job_try=job_try,
            worker_id=self.id,
            running=started,
            actor=who.get("actor"),
            reason=who.get("reason"),
        )

    # -- writing outcomes back ---------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._have_pending.wait()
            self._have_pending.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Write every outcome collected so far, one FINISH_LUA call per batch. One flush
        at a time (the lock): a batch in flight is never cut off by a second caller."""
        async with self._flush_lock:
            failures = 0
            while self._pending:
                batch, self._pending = self._pending, []
                args: list[Any] = [self.id]
                for rec in batch:
                    args.extend(rec.args)
                self._flushing = {rec.args[1] for rec in batch}
                try:
                    await self._scripts["finish"](keys=[self._jobs_key], args=args)
                except BaseException as exc:
                    self._pending[:0] = batch  # kept, also when cancelled (a bounded stop)
                    if not isinstance(exc, Exception):
                        raise
                    failures += 1
                    _log.warning(logs.WORKER_FINISH_FAILED, worker_id=self.id, error=repr(exc))
                    if self._force.is_set() and failures >= 3:
                        return
                    await asyncio.sleep(min(1.0, 0.05 * 2**failures))
                finally:
                    self._flushing = set()

    async def _drain_pending(self) -> None:
        """Write every outcome collected so far (at shutdown, and before a burst ends)."""
        await self._flush()

    # -- heartbeat, recovery, cron -----------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._beat()
            except Exception as exc:
                _log.warning(logs.WORKER_HEARTBEAT_FAILED, worker_id=self.id, error=repr(exc))

    def _start_keepalive(self) -> None:
        """Renew the registration's TTL from a thread too, so that a job blocking the event
        loop does not make this worker look dead (:class:`~asyncjobs._liveness.Keepalive`)."""
        ttl_ms = round(self.heartbeat * MISSED_BEATS * 1000)
        client = blocking_client(self.app.settings)
        self._keepalive = Keepalive(client, self.id, self.heartbeat, ttl_ms)
        self._keepalive.start()

    async def _stop_keepalive(self) -> None:
        """Stop the keepalive before deregistering (off the loop: a renewal under way may
        take up to ``ASYNCJOBS_REDIS_TIMEOUT`` to give up; waited for a second at most)."""
        if self._keepalive is not None:
            await asyncio.to_thread(self._keepalive.stop, 1.0)
            self._keepalive = None

    async def _beat(self, *, first: bool = False) -> None:
        fields = registration(
            self.id, self.queues, self._started, list(self._running), self.max_jobs, self._since
        )
        ttl_ms = round(self.heartbeat * MISSED_BEATS * 1000)
        existed = await beat(self.redis, self.id, fields, ttl_ms)
        if not existed and not first:
            _log.error(
                logs.WORKER_PRESUMED_DEAD,
                worker_id=self.id,
                running=len(self._running),
                hint="the process got no CPU (or its keepalive thread no GIL) for longer than 3 "
                "heartbeats, or Redis lost the registration; other workers may have started "
                "this worker's jobs again",
            )
        info = f"{datetime.now():%b-%d %H:%M:%S} j_complete={self.jobs_complete} " + (
            f"j_failed={self.jobs_failed} j_retried={self.jobs_retried} "
            f"j_ongoing={len(self._running)} worker={self.id}"
        )
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:  # arq's health-check key, for `arq --check`
            pipe.psetex(queue + ":health-check", ttl_ms + 1000, info)
        counted = self._finished_since_beat()
        throughput.count(pipe, *counted)
        await pipe.execute()
        self._counted = (self._counted[0] + counted[0], self._counted[1] + counted[1])
        await self._recover()

    def _finished_since_beat(self) -> tuple[int, int]:
        """Jobs succeeded and tries failed since the counts last reached Redis."""
        failed = self.jobs_failed + self.jobs_retried
        return self.jobs_complete - self._counted[0], failed - self._counted[1]

    async def _count_finished(self) -> None:
        """Add what finished since the last beat to the dashboard's per-minute counts."""
        counted = self._finished_since_beat()
        if counted == (0, 0):
            return
        pipe = self.redis.pipeline(transaction=False)
        throughput.count(pipe, *counted)
        await pipe.execute()
        self._counted = (self._counted[0] + counted[0], self._counted[1] + counted[1])

    async def _recover(self) -> None:
        reply = await self._scripts["recover"](keys=[WORKERS_KEY], args=[self.id])
        for i in range(0, len(reply), 2):
            dead = reply[i].decode()
            job_ids = [j.decode() for j in reply[i + 1]]
            _log.warning(
                logs.WORKER_RECOVERED,
                worker_id=self.id,
                dead_worker_id=dead,
                job_ids=job_ids,
                count=len(job_ids),
            )
            if job_ids:
                self._wake.set()

    async def _release_lost_claims(self, reason: str = "lost") -> None:
        """Hand back any job this worker holds in Redis but neither runs nor has an outcome
        for: after a claim whose reply was lost, and at shutdown."""
        self._claim_failed = False
        members: set[bytes] = await self.redis.smembers(self._jobs_key)  # type: ignore[misc]
        held = {m.decode() for m in members}
        pending = {rec.args[1] for rec in self._pending} | self._flushing
        lost = held - set(self._running) - pending
        if not lost:
            return
        for job_id in lost:
            self._pending.append(Record("Q", Claimed("", job_id, 0, None, 0, False)))
        self._have_pending.set()
        _log.warning(logs.JOB_REQUEUED, worker_id=self.id, job_ids=sorted(lost), reason=reason)

    async def _cron_loop(self) -> None:
        window = max(self.poll_delay, 0.5)
        while True:
            try:
                await self._run_cron(window * 2)
            except Exception as exc:
                _log.warning(logs.WORKER_CRON_FAILED, worker_id=self.id, error=repr(exc))
            await asyncio.sleep(window)

    async def _run_cron(self, ahead_s: float) -> None:
        """Enqueue each cron job whose next run falls within ``ahead_s`` (as arq does: the
        id names the run time, so workers that enqueue the same run write it once)."""
        now = datetime.now().astimezone()
        cutoff = now.timestamp() + ahead_s
        due: list[Prepared] = []
        now_ms = timestamp_ms()
        for cron in self.cron_jobs:
            if cron.next_run is None:
                if cron.run_at_startup:
                    cron.next_run = now
                else:
                    cron.calculate_next(now)
                    continue
            if cron.next_run.timestamp() < cutoff:
                run_ms = to_unix_ms(cron.next_run)
                job_id = cron.job_id or f"{cron.name}:{run_ms}"
                score = max(run_ms, now_ms)
                payload = serialize_job(cron.name, (), {}, None, now_ms)
                queue = cron.queue if isinstance(cron, ScheduledRun) else None
                due.append(
                    Prepared(
                        job_id,
                        queue or self.app.settings.queue_name,
                        score,
                        score - now_ms + EXPIRES_EXTRA_MS,
                        payload,
                        None,
                        0,
                    )
                )
                cron.calculate_next(cron.next_run)
        if due:
            await write_prepared(self.app, due, "cron jobs were not")


async def _wait_all_or(
    tasks: list[asyncio.Task[None]], force: asyncio.Task[Any], grace: float
) -> None:
    """Wait until every task is done, ``force`` completes, or ``grace`` seconds pass."""
    if grace <= 0:
        return
    everything = asyncio.ensure_future(asyncio.wait(tasks))
    try:
        await asyncio.wait([everything, force], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    finally:
        everything.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything
