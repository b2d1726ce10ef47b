"""What the features call to be measured, and what a worker's health answer is read from.

Every :class:`~asyncjobs._core.Core` holds an :class:`Instruments` (``app.instruments``).
The features tell it what happened: an enqueue written or rejected
(:mod:`asyncjobs._enqueue`, :mod:`asyncjobs._bulk`, the kill switch), a job started,
succeeded, failed, retried, skipped or dead (the worker loop), a reconciler's run.
This base does nothing: each call is a method that returns at once, so asyncjobs
without metrics pays a few empty calls per job and builds nothing.
:func:`asyncjobs.metrics.enable` gives an App the Prometheus-backed instruments,
which live above this layer (the features never import them).

:class:`Health` is what a worker's loop writes and its ``/healthz`` reads, from
another thread: plain attributes, each read or written whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar


class JobMeter:
    """One job's instruments, bound to its name (see :meth:`Instruments.job`).

    ``start`` is what :meth:`started` returned for the same run.
    """

    __slots__ = ()
    enabled: ClassVar[bool] = False
    """Whether anything is counted: callers skip work that only feeds the meter."""

    def enqueued(self, queue: str, count: int = 1) -> None:
        """``count`` jobs were written to ``queue``."""

    def rejected(self, reason: str, count: int = 1) -> None:
        """``count`` enqueues were refused: ``flag``, ``unique`` or ``duplicate_id``."""

    def skipped(self, job_id: str) -> None:
        """The kill switch skipped a queued copy (its run then ends as if it succeeded)."""

    def started(self, queue: str, enqueue_ms: int, job_try: int) -> float:
        """A claimed job from ``queue`` starts its try ``job_try``; returns its start."""
        return 0.0

    def succeeded(self, job_id: str, start: float) -> None:
        """The run returned."""

    def retrying(self, retry: BaseException, start: float) -> None:
        """The run ended in arq's ``Retry``: a failed try to be tried again, a job's own
        request for another try, or a wait for its lock."""

    def failed(self, error: BaseException, start: float, *, dead: bool) -> None:
        """The run raised ``error`` and will not be tried again; ``dead``: the job went to
        the dead letters (reconcilers and arq cron jobs have none)."""

    def dead(self) -> None:
        """A claimed payload that cannot run went to the dead letters."""

    def ended(self, queue: str) -> None:
        """The run that :meth:`started` is over, however it ended."""


NO_METER = JobMeter()


class Instruments:
    """What the features report to; this one does nothing (metrics are off)."""

    enabled: ClassVar[bool] = False

    def job(self, name: str) -> JobMeter:
        """The instruments of job ``name``."""
        return NO_METER

    def reconciled(self, reconciler: str, rows: int, enqueued: int) -> None:
        """A reconciler's run read ``rows`` rows and enqueued ``enqueued`` jobs."""


NO_INSTRUMENTS = Instruments()


class Health:
    """A worker's liveness, as its loop last wrote it (``time.monotonic()`` seconds).

    ``window`` is how old a mark may be while the worker counts as healthy;
    ``stopping`` says whether the worker is winding down.
    """

    __slots__ = ("full", "loop_at", "polled_at", "redis_down_since", "stopping", "window")

    def __init__(
        self,
        window: float,
        stopping: Callable[[], bool],
        redis_down_since: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.window = window
        self.stopping = stopping
        self.redis_down_since = redis_down_since
        """Since when the worker's Redis has been unreachable (``None``: it is not)."""
        self.loop_at: float | None = None
        """When the event loop last ran the health tick (``None``: not yet)."""
        self.polled_at: float | None = None
        """When the claim loop last claimed or polled."""
        self.full = False
        """Every slot is taken: the worker waits for a job to end, not for the queue."""
