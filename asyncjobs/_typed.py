"""The static types of the enqueue API: what lets mypy check a call against the job.

``enqueue(job, *args, **kwargs)`` is overloaded (in :mod:`asyncjobs._app`):

1. a job function ``async def f(ctx, ...)``: the arguments after ``ctx`` are checked
   against ``f``'s own parameters (a ``ParamSpec``), as if ``f`` were called;
2. a job class: the arguments are checked against its ``perform(self, ...)``;
3. a job name (``str``) or a :class:`~asyncjobs.JobSpec`: not checked (the runtime
   check, :class:`~asyncjobs.JobArgumentsError`, still applies);
4. a call with one or more of enqueue's ``_options`` (``_defer_by=`` ...): the options'
   types are checked, the job's arguments are not; ``with_options(_defer_by=...)``
   takes the options first, and its ``enqueue(job, ...)`` checks the arguments as 1-3.

Why 4 cannot check both: a ``ParamSpec``'s ``*args: P.args, **kwargs: P.kwargs`` take
no further keyword parameters (PEP 612), so no signature says "the job's parameters
plus ``_defer_by``". Each option has an overload of its own in which it is required, so
that a call without options never falls through to the unchecked form: a wrong call
without options is always an error. :data:`EnqueueOptions` types the options of
``enqueue_many`` and ``enqueue_stream``, which take no job arguments as keywords.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeAlias, TypedDict

from ._jobs import Seconds

if TYPE_CHECKING:
    import asyncpg

    from ._jobs import JobSpec

P = ParamSpec("P")


class Performs(Protocol[P]):
    """A job class: its ``perform(self, ...)`` takes the job's arguments."""

    def perform(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[Any]: ...


JobRef: TypeAlias = "Callable[..., Awaitable[Any]] | type[Any] | str | JobSpec"
"""Anything ``enqueue`` takes as its job: a decorated function or class, a name, a spec."""


class EnqueueOptions(TypedDict, total=False):
    """enqueue's ``_options``, with their types (see :data:`asyncjobs._enqueue.ENQUEUE_OPTIONS`).

    ``_connection`` (an asyncpg connection whose transaction the enqueue joins) is typed
    here so that calls passing it check; a release without it refuses it at run time.
    """

    _job_id: str
    _queue_name: str
    _defer_until: datetime
    _defer_by: Seconds
    _expires: Seconds
    _job_try: int
    _jitter: Seconds
    _jitter_min: Seconds
    _connection: asyncpg.Connection | None


__all__ = ["EnqueueOptions", "JobRef", "P", "Performs", "Seconds"]
