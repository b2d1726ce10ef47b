"""Schedules of scheduled jobs: :class:`Cron` (calendar fields) and :class:`Every` (a period).

Both answer one question, :meth:`next_after`: the first run time strictly after a
moment, in UTC, to the second. A scheduled job (``@job(cron=...)`` or
``@job(every=...)``) is run by the worker's cron loop, the one that runs the
reconcilers (:mod:`asyncjobs.runner`), through :class:`ScheduledRun`.

What was chosen where the issue is silent:

- Times are UTC, whatever the machine's time zone (daylight saving never skips or
  repeats a run).
- A :class:`Cron` field left out means "every value" when a finer field is given and
  its first value otherwise, as a crontab line is read: ``Cron(hour=3)`` runs once a
  day at 03:00:00, ``Cron(minute={0, 30})`` at :00:00 and :30:00 of every hour. When
  both ``day`` and ``weekday`` are given, a run needs both to match (arq's rule, not
  crontab's "either").
- :class:`Every` runs on the multiples of its period since the Unix epoch, so every
  worker computes the same run times: ``every=timedelta(minutes=5)`` runs at :00,
  :05, ... Periods are whole seconds from one second up; sub-minute periods are
  allowed (each run is still one job in Redis, so keep them for light work).
"""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ._exceptions import JobDefinitionError

_FIELDS = ("month", "day", "weekday", "hour", "minute", "second")
"""Coarsest first; weekday sits with day (both pick days)."""
_RANGES = {
    "month": range(1, 13),
    "day": range(1, 32),
    "weekday": range(7),
    "hour": range(24),
    "minute": range(60),
    "second": range(60),
}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday names :class:`Cron` takes besides 0 (Monday) to 6 (Sunday), as ``datetime.weekday()``."""
_DAY_NUMBERS = {
    **{short: n for n, short in enumerate(WEEKDAYS)},
    **{calendar.day_name[n].lower(): n for n in range(7)},
}
"""A day's name, short or in full (any case), to its number; nothing else is a day."""
_SEARCH_LIMIT = 100_000
"""Steps :meth:`Cron.next_after` takes at most (tens of years of days): an impossible
date is refused when the Cron is made, so this is never reached."""

FieldValue = int | str | Iterable[int | str] | None


class Schedule(Protocol):
    """What a scheduled job's schedule does: name its next run, describe itself."""

    def next_after(self, moment: datetime) -> datetime:
        """The first run strictly after ``moment`` (an aware datetime), in UTC."""
        ...

    def describe(self) -> str:
        """The schedule, for people (``jobs list``)."""
        ...

    def period_hint(self) -> float:
        """About how many seconds lie between runs (for how long a run's result is kept)."""
        ...


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a schedule needs an aware datetime (with tzinfo)")
    return moment.astimezone(UTC)


def _values(name: str, value: FieldValue) -> frozenset[int]:
    items = [value] if isinstance(value, int | str) else (value or ())
    try:
        found = set()
        for item in items:
            if name == "weekday" and isinstance(item, str) and item.lower() in _DAY_NUMBERS:
                item = _DAY_NUMBERS[item.lower()]
            if isinstance(item, bool) or not isinstance(item, int):
                raise TypeError
            found.add(item)
    except TypeError:
        raise JobDefinitionError(
            f"Cron {name}={value!r} must be a whole number or a set of them"
            + (
                ", or day names ('mon' ... 'sun', or in full; several as a set: {'mon', 'fri'})"
                if name == "weekday"
                else ""
            )
        ) from None
    allowed = _RANGES[name]
    bad = sorted(v for v in found if v not in allowed)
    if bad or not found:
        raise JobDefinitionError(
            f"Cron {name}={value!r}: each value must be from {allowed.start} to "
            f"{allowed.stop - 1}" + (" (0 is Monday)" if name == "weekday" else "")
        )
    return frozenset(found)


class Cron:
    """A calendar schedule in UTC: ``Cron(minute={0, 30})``, ``Cron(hour=3, weekday="mon")``.

    Fields: ``month`` (1-12), ``day`` of the month (1-31), ``weekday`` (0 = Monday
    ... 6 = Sunday, or ``"mon"`` ... ``"sun"``), ``hour``, ``minute``, ``second``;
    each a number or a set of numbers. See the module docstring for fields left out.
    Raises :class:`JobDefinitionError` for a value out of range or a date that never
    comes (``Cron(month=2, day=30)``).
    """

    __slots__ = ("fields",)

    def __init__(
        self,
        *,
        month: FieldValue = None,
        day: FieldValue = None,
        weekday: FieldValue = None,
        hour: FieldValue = None,
        minute: FieldValue = None,
        second: FieldValue = None,
    ) -> None:
        given = {"month": month, "day": day, "weekday": weekday}
        given |= {"hour": hour, "minute": minute, "second": second}
        named = [f for f in _FIELDS if given[f] is not None]
        if not named:
            raise JobDefinitionError(
                "Cron() needs at least one field, e.g. Cron(minute=0) for every hour; "
                "for a fixed period use every=timedelta(...)"
            )
        finest = max(_FIELDS.index(f) for f in named)
        fields: dict[str, frozenset[int]] = {}
        for index, name in enumerate(_FIELDS):
            value = given[name]
            if value is not None:
                fields[name] = _values(name, value)
            elif index > finest and name != "weekday":
                fields[name] = frozenset({_RANGES[name].start})  # finer: its first value
            else:
                fields[name] = frozenset(_RANGES[name])  # coarser: every value
        self.fields = fields
        if not any(
            d <= calendar.monthrange(2000, m)[1] for m in fields["month"] for d in fields["day"]
        ):
            raise JobDefinitionError(f"{self!r} names a date that never comes")

    def _narrowed(self) -> list[tuple[str, list[int]]]:
        """The fields that are not "every value", with their sorted values."""
        return [
            (name, sorted(values))
            for name, values in self.fields.items()
            if values != frozenset(_RANGES[name])
        ]

    def __repr__(self) -> str:
        parts = [
            f"{name}={values[0] if len(values) == 1 else '{' + ', '.join(map(str, values)) + '}'}"
            for name, values in self._narrowed()
        ]
        return f"Cron({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cron) and other.fields == self.fields

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, tuple(sorted(v))) for k, v in self.fields.items())))

    def describe(self) -> str:
        """``cron minute=0,30 second=0 UTC``: the fields that are not "every value"."""
        parts = [f"{name}={_compact(values)}" for name, values in self._narrowed()]
        return f"cron {' '.join(parts)} UTC"

    def next_after(self, moment: datetime) -> datetime:
        """The first time strictly after ``moment`` whose fields all match, in UTC."""
        f = self.fields
        t = _utc(moment).replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(_SEARCH_LIMIT):
            if t.month not in f["month"]:
                t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
                t = t.replace(second=0)
            elif t.day not in f["day"] or t.weekday() not in f["weekday"]:
                t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            elif t.hour not in f["hour"]:
                t = (t + timedelta(hours=1)).replace(minute=0, second=0)
            elif t.minute not in f["minute"]:
                t = (t + timedelta(minutes=1)).replace(second=0)
            elif t.second not in f["second"]:
                t += timedelta(seconds=1)
            else:
                return t
        raise JobDefinitionError(f"{self!r} has no run in the next decades")  # pragma: no cover

    def period_hint(self) -> float:
        """Seconds between the next two runs from now."""
        first = self.next_after(datetime.now(UTC))
        return (self.next_after(first) - first).total_seconds()


def _compact(values: list[int]) -> str:
    """``0,30``; a run of three or more evenly spaced values as crontab writes it, ``0-58/2``
    or ``9-17``."""
    steps = {b - a for a, b in itertools.pairwise(values)}
    if len(values) < 3 or len(steps) != 1:
        return ",".join(map(str, values))
    (step,) = steps
    return f"{values[0]}-{values[-1]}" + ("" if step == 1 else f"/{step}")


@dataclass(frozen=True, slots=True)
class Every:
    """A fixed period in whole seconds (at least one), aligned to the Unix epoch in UTC."""

    seconds: int

    @classmethod
    def of(cls, every: timedelta | float) -> Every:
        """From a ``timedelta`` or seconds; :class:`JobDefinitionError` unless whole seconds
        from 1 up."""
        value = every.total_seconds() if isinstance(every, timedelta) else every
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value < 1
            or value != int(value)
        ):
            raise JobDefinitionError(
                f"every={every!r} must be a whole number of seconds from 1 up "
                "(a timedelta or seconds)"
            )
        return cls(int(value))

    def describe(self) -> str:
        """``every 0:05:00``."""
        return f"every {timedelta(seconds=self.seconds)}"

    def next_after(self, moment: datetime) -> datetime:
        """The next multiple of the period since the epoch, strictly after ``moment``."""
        at = int(_utc(moment).timestamp()) // self.seconds * self.seconds + self.seconds
        return datetime.fromtimestamp(at, UTC)

    def period_hint(self) -> float:
        """The period."""
        return float(self.seconds)


def make_schedule(cron: Cron | None, every: timedelta | float | None, origin: str) -> Schedule:
    """The schedule of ``@job(cron=...)`` or ``@job(every=...)``; exactly one is given."""
    if cron is not None and every is not None:
        raise JobDefinitionError(f"{origin} takes cron= or every=, not both")
    if cron is not None:
        if not isinstance(cron, Cron):
            raise JobDefinitionError(
                f"cron of {origin} must be an asyncjobs.Cron, e.g. Cron(minute={{0, 30}}), "
                f"not {cron!r}"
            )
        return cron
    assert every is not None
    return Every.of(every)


@dataclass(slots=True, eq=False)
class ScheduledRun:
    """A scheduled job as the worker's cron loop sees it (the attributes it reads from an arq
    ``CronJob``): its name, queue and next run. One per worker; every worker computes the
    same run times, and a run's job id names its time, so each run is written once."""

    name: str
    schedule: Schedule
    queue: str | None = None
    next_run: datetime | None = None
    run_at_startup: bool = False
    job_id: str | None = None
    keep_result_s: float | None = None

    def calculate_next(self, prev_run: datetime) -> None:
        """Set :attr:`next_run` to the first run after ``prev_run``."""
        self.next_run = self.schedule.next_after(prev_run)
