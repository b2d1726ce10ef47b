"""The ``@job`` decorator, :class:`JobSpec` and the registry of jobs by name."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, overload

from ._backoff import BackoffPolicy
from ._exceptions import AsyncJobsError, DuplicateJobError, JobDefinitionError, UnknownJobError
from ._naming import STOP_FLAG_PREFIX, is_valid_job_name, snake_case
from ._schedule import Cron, Schedule, make_schedule

T = TypeVar("T")
SPEC_ATTRIBUTE = "__asyncjobs_job__"

Seconds = float | int | timedelta


MAX_SECONDS = 10 * 365 * 86400
"""The longest duration anywhere (ten years): longer is a mistake, not a plan."""


def seconds(
    value: Any,
    what: str,
    *,
    allow_zero: bool = True,
    error: type[AsyncJobsError] = JobDefinitionError,
) -> float:
    """Seconds from a number or a timedelta: not NaN, not negative (nor zero unless
    ``allow_zero``), at most :data:`MAX_SECONDS`; else ``error`` naming ``what``."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            result = math.inf
    else:
        raise error(f"{what} must be seconds or a timedelta, not {value!r}")
    if math.isnan(result):
        raise error(f"{what} must be a number of seconds, not NaN")
    if result < 0 or (result == 0 and not allow_zero):
        raise error(f"{what} must be {'0 or more' if allow_zero else 'positive'}")
    if result > MAX_SECONDS:
        raise error(f"{what} must be at most ten years ({MAX_SECONDS} s)")
    return result


def to_seconds(value: Seconds | None, what: str) -> float | None:
    """:func:`seconds` for a job option; ``None`` stays ``None``."""
    return None if value is None else seconds(value, what)


@dataclass(frozen=True, slots=True, eq=False)
class JobSpec:
    """What asyncjobs knows about one job: its name, how to call it, and its options.

    ``target`` is what ``@job`` decorated: an ``async def f(ctx, ...)`` function,
    or a class whose async ``perform(self, ...)`` runs the job on a fresh instance
    (the arq context is then ``self.ctx``). ``signature`` is the job's parameters
    without ``ctx``/``self``, used to check arguments at enqueue time.
    """

    name: str
    target: Any
    queue: str | None = None
    timeout: float | None = None
    keep_result: float | None = None
    signature: inspect.Signature = field(default=inspect.Signature())
    is_class: bool = False
    arity: tuple[int, int] = (0, 0)
    max_tries: int = 25
    backoff: BackoffPolicy | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    redact_args: bool = False
    unique_for: float | None = None
    unique_until: str = "success"
    unique_key: Callable[..., Any] | None = None
    lock: Callable[..., Any] | None = None
    exclusive: bool = False
    on_locked: str = "redefer"
    lock_retry: float = 1.0
    schedule: Schedule | None = None

    @property
    def flag(self) -> str:
        """The kill-switch flag that stops this job: ``disable_<name>``."""
        return STOP_FLAG_PREFIX + self.name

    @property
    def origin(self) -> str:
        """``module.qualname`` of the decorated object, for messages."""
        return f"{self.target.__module__}.{self.target.__qualname__}"

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` if the arguments do not fit the job's signature."""
        low, high = self.arity
        if not kwargs and low <= len(args) <= high:
            return  # the common case, without building a BoundArguments
        self.signature.bind(*args, **kwargs)

    async def invoke(self, ctx: Mapping[str, Any], args: Any, kwargs: dict[str, Any]) -> Any:
        """Run the job itself (no middleware, no instrumentation)."""
        if self.is_class:
            instance = self.target()
            instance.ctx = ctx
            return await instance.perform(*args, **kwargs)
        return await self.target(ctx, *args, **kwargs)


def positional_arity(signature: inspect.Signature) -> tuple[int, int]:
    """(required, accepted) positional arguments when positional ones alone can satisfy
    ``signature``; ``(1, 0)`` (never satisfied) when a keyword is required."""
    low = high = 0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
        elif p.kind is p.VAR_POSITIONAL:
            high = 1 << 30
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return 1, 0
    return low, high


def _signature_without_first(fn: Callable[..., Any], origin: str, first: str) -> inspect.Signature:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise JobDefinitionError(f"{origin} must take {first!r} as its first positional parameter")
    rest = params[1:]
    for p in rest:
        if p.name.startswith("_"):
            raise JobDefinitionError(
                f"{origin} has parameter {p.name!r}: job parameters may not start with '_', "
                "which enqueue() reserves for its options (_job_id, _defer_by, ...)"
            )
    return sig.replace(parameters=rest)


def build_spec(  # noqa: C901 -- one check per @job option, each with its own message
    target: Any,
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: Seconds | None = None,
    keep_result: Seconds | None = None,
    max_tries: int | None = None,
    backoff: Any = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    redact_args: bool = False,
    unique_for: Seconds | None = None,
    unique_until: str = "success",
    unique_key: Callable[..., Any] | None = None,
    lock: Callable[..., Any] | None = None,
    exclusive: bool = False,
    on_locked: str = "redefer",
    lock_retry: Seconds = 1.0,
    cron: Cron | None = None,
    every: Seconds | None = None,
) -> JobSpec:
    """Validate ``target`` and build its :class:`JobSpec` (does not register it).

    ``max_tries`` defaults to 25, or to 1 for a scheduled job (``cron``/``every``),
    whose next run is its retry.
    """
    origin = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
    if inspect.isclass(target):
        perform = getattr(target, "perform", None)
        if perform is None or not inspect.iscoroutinefunction(perform):
            raise JobDefinitionError(f"{origin} must define 'async def perform(self, ...)'")
        try:
            inspect.signature(target).bind()
        except TypeError:
            raise JobDefinitionError(
                f"{origin} must be constructible without arguments; pass data to perform()"
            ) from None
        signature = _signature_without_first(perform, origin + ".perform", "self")
        is_class = True
    elif inspect.iscoroutinefunction(target):
        signature = _signature_without_first(target, origin, "ctx")
        is_class = False
    else:
        raise JobDefinitionError(
            f"{origin} is not a job: use @job on an 'async def f(ctx, ...)' function "
            "or a class with 'async def perform(self, ...)'"
        )
    job_name = name if name is not None else snake_case(target.__name__)
    if not is_valid_job_name(job_name):
        raise JobDefinitionError(
            f"job name {job_name!r} of {origin} is not valid: use lower-case letters, digits "
            "and underscores, starting with a letter (at most 120 characters)"
        )
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise JobDefinitionError(f"queue of {origin} must be a non-empty string")
    schedule = None
    if cron is not None or every is not None:
        schedule = make_schedule(cron, every, origin)
        try:
            signature.bind()
        except TypeError:
            raise JobDefinitionError(
                f"{origin} is a scheduled job, so it must run without arguments: "
                f"its parameters {signature} need defaults"
            ) from None
    if max_tries is None:
        max_tries = 25 if schedule is None else 1
    if not isinstance(max_tries, int) or isinstance(max_tries, bool) or max_tries < 1:
        raise JobDefinitionError(f"max_tries of {origin} must be a whole number from 1")
    if backoff is not None and not callable(getattr(backoff, "delay", None)):
        raise JobDefinitionError(
            f"backoff of {origin} must have a delay(failed_try) -> seconds method, "
            "e.g. asyncjobs.Backoff(base=5, cap=600)"
        )
    unique_s = to_seconds(unique_for, f"unique_for of {origin}")
    if unique_s is not None and unique_s <= 0:
        raise JobDefinitionError(f"unique_for of {origin} must be positive")
    if unique_until not in ("start", "success"):
        raise JobDefinitionError(
            f"unique_until of {origin} must be 'start' or 'success', not {unique_until!r}"
        )
    if unique_key is not None and (unique_s is None or not callable(unique_key)):
        raise JobDefinitionError(
            f"unique_key of {origin} must be a callable taking the job's arguments, "
            "and needs unique_for"
        )
    if lock is not None and not callable(lock):
        raise JobDefinitionError(
            f"lock of {origin} must be a callable taking the job's arguments and returning "
            "the lock's name, e.g. lambda invoice_id: f'invoice:{invoice_id}'"
        )
    if on_locked not in ("redefer", "drop"):
        raise JobDefinitionError(f"on_locked of {origin} must be 'redefer' or 'drop'")
    lock_retry_s = to_seconds(lock_retry, f"lock_retry of {origin}") or 0.0
    if lock_retry_s <= 0:
        raise JobDefinitionError(f"lock_retry of {origin} must be positive")
    retry_on = _exception_types(retry_on, f"retry_on of {origin}")
    give_up_on = _exception_types(give_up_on, f"give_up_on of {origin}")
    return JobSpec(
        name=job_name,
        target=target,
        queue=queue,
        timeout=to_seconds(timeout, f"timeout of {origin}"),
        keep_result=to_seconds(keep_result, f"keep_result of {origin}"),
        signature=signature,
        is_class=is_class,
        arity=positional_arity(signature),
        max_tries=max_tries,
        backoff=backoff,
        retry_on=retry_on,
        give_up_on=give_up_on,
        redact_args=bool(redact_args),
        unique_for=unique_s,
        unique_until=unique_until,
        unique_key=unique_key,
        lock=lock,
        exclusive=bool(exclusive),
        on_locked=on_locked,
        lock_retry=lock_retry_s,
        schedule=schedule,
    )


def _exception_types(value: Any, what: str) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise JobDefinitionError(f"{what} must be exception classes, not {t!r}")
    return types


class Registry:
    """Jobs by name. Registering a second, different job under a taken name is an error."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}

    def add(self, spec: JobSpec) -> JobSpec:
        """Register ``spec``; re-registering the same definition (a re-import) replaces it."""
        existing = self._jobs.get(spec.name)
        if existing is not None and existing.origin != spec.origin:
            raise DuplicateJobError(
                f"job name {spec.name!r} is taken by {existing.origin}; {spec.origin} cannot "
                f"use it too. Rename one of them with @job(name='...')"
            )
        self._jobs[spec.name] = spec
        return spec

    def get(self, name: str) -> JobSpec:
        """The job named ``name``, or :class:`UnknownJobError` listing close matches."""
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJobError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, self._jobs, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        known = ", ".join(sorted(self._jobs)) or "none"
        return (
            f"no job named {name!r} is registered.{hint} Registered jobs: {known}. "
            "Import the module that defines it (the worker imports ASYNCJOBS_IMPORTS)."
        )

    def resolve(self, job: Any) -> JobSpec:
        """A spec from a job name, a decorated function or class, or a spec."""
        if isinstance(job, str):
            return self.get(job)
        if isinstance(job, JobSpec):
            return job
        spec = getattr(job, SPEC_ATTRIBUTE, None)
        if isinstance(spec, JobSpec):
            return spec
        raise UnknownJobError(
            f"{job!r} is not a job: decorate it with @asyncjobs.job, or pass a job name"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(sorted(self._jobs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._jobs)

    def names(self) -> frozenset[str]:
        """The registered job names."""
        return frozenset(self._jobs)

    def remove(self, name: str) -> None:
        """Forget a job (for tests)."""
        self._jobs.pop(name, None)


JOB_OPTIONS = frozenset(
    {
        "name",
        "queue",
        "timeout",
        "keep_result",
        "max_tries",
        "backoff",
        "retry_on",
        "give_up_on",
        "redact_args",
        "unique_for",
        "unique_until",
        "unique_key",
        "lock",
        "exclusive",
        "on_locked",
        "lock_retry",
        "cron",
        "every",
    }
)

default_registry = Registry()
"""The registry ``@job`` adds to unless given ``registry=``."""


@overload
def job(target: T, /) -> T: ...


@overload
def job(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: Seconds | None = None,
    keep_result: Seconds | None = None,
    max_tries: int | None = None,
    backoff: Any = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    redact_args: bool = False,
    unique_for: Seconds | None = None,
    unique_until: str = "success",
    unique_key: Callable[..., Any] | None = None,
    lock: Callable[..., Any] | None = None,
    exclusive: bool = False,
    on_locked: str = "redefer",
    lock_retry: Seconds = 1.0,
    cron: Cron | None = None,
    every: Seconds | None = None,
    registry: Registry | None = None,
) -> Callable[[T], T]: ...


def job(target: Any = None, /, *, registry: Registry | None = None, **options: Any) -> Any:
    """Register an async function or a class with an async ``perform`` as a job.

    Use it bare (``@job``) or with options (``@job(queue="urgent", timeout=30)``):
    ``name`` (default: the snake_case of the function or class name, so
    ``InvoiceJob`` and ``invoice_job`` both name ``invoice_job``), ``queue``,
    ``timeout`` and ``keep_result`` (seconds or ``timedelta``); and retries:
    ``max_tries`` (default 25), ``backoff`` (default :class:`asyncjobs.Backoff`),
    ``retry_on``/``give_up_on`` (exception classes) and ``redact_args`` (keep no
    arguments in the job's dead letter), see :mod:`asyncjobs._retries`; and
    uniqueness and exclusivity: ``unique_for``, ``unique_until``, ``unique_key``,
    ``lock``, ``exclusive``, ``on_locked``, ``lock_retry``, see
    :mod:`asyncjobs._uniqueness`; and a schedule: ``cron=asyncjobs.Cron(...)`` or
    ``every=timedelta(...)`` runs the job (which then takes no arguments) once per
    period across all workers, see :mod:`asyncjobs._schedule`. The decorated
    object is returned unchanged, so it can still be called directly in tests.
    Raises :class:`JobDefinitionError` for something that cannot be a job and
    :class:`DuplicateJobError` for a taken name.
    """

    unknown = set(options) - JOB_OPTIONS
    if unknown:
        raise JobDefinitionError(
            f"@job got unknown option(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(JOB_OPTIONS))}"
        )

    def decorate(obj: Any) -> Any:
        spec = build_spec(obj, **options)
        (registry if registry is not None else default_registry).add(spec)
        setattr(obj, SPEC_ATTRIBUTE, spec)
        return obj

    if target is not None:
        return decorate(target)
    return decorate
