"""Argument rules and timed stops: the kill switch for part of a job class, or for a while.

An argument rule stops only the jobs whose named argument matches:
``customer_id=42`` stops ``invoice_job(42, ...)`` and ``invoice_job(customer_id=42)``
but not ``invoice_job(43)``. A rule is one or more conditions, all of which must
hold (``--where`` given twice is one rule of two conditions). Conditions:

- ``NAME=VALUE`` (also ``==``) and ``NAME!=VALUE``; ``NAME in (V1, V2, ...)``;
- ``NAME<N``, ``<=``, ``>``, ``>=``: numbers only, and they match number arguments only.

Values are numbers (``42``, ``-1.5``) or strings (``eu``, ``'two words'``). Chosen where
the issue is silent: a number also matches the string that is its exact decimal text
(``customer_id=42`` stops a job given ``"42"``, as an operator typing 42 means), a
string matches only that string, ``True``/``False`` never match a number, and a job
called without the argument takes the parameter's default (as Python would bind it);
with no default and no value, no condition on it holds (``!=`` neither).

The argument is found by name in the job's signature (the ``JobSpec`` of the
registry): as a keyword, at its position among the positional arguments, or as its
default. That binding is compiled once per job and rule set into a :class:`Matcher`,
so a check costs a few dictionary lookups: each rule with an equality (``=``, ``in``)
is found by one hash lookup of that argument's value, whatever the number of rules;
only rules made of ranges and ``!=`` alone are tried one by one.

A rule may belong to every job class (:data:`ALL_JOBS`, ``--all-jobs``): it applies to
each job whose signature has all the rule's arguments, and to no other.

Timed stops end at a moment (``--for 30m``, ``--until 2026-12-01T10:00Z``):
:func:`parse_for`, :func:`parse_until` and :func:`end_of` turn them into a UTC datetime
after now, or a :class:`FlagRuleError` naming what is wrong.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._exceptions import FlagRuleError
from ._jobs import MAX_SECONDS
from ._naming import STOP_FLAG_PREFIX

if TYPE_CHECKING:
    from ._jobs import JobSpec

ALL_JOBS = "*"
"""The job of a rule that applies to every job class taking its arguments."""
ALL_JOBS_FLAG = STOP_FLAG_PREFIX + ALL_JOBS
"""The name an all-jobs rule is recorded under in the flags' history."""
RANGES = ("<", "<=", ">", ">=")
OPERATORS = ("=", "!=", *RANGES, "in")
_MISSING: Any = object()

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_COMPARISON = re.compile(rf"^\s*({_NAME})\s*(==|!=|<=|>=|=|<|>)\s*(.*?)\s*$", re.DOTALL)
_MEMBERSHIP = re.compile(rf"^\s*({_NAME})\s+in\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_ITEM = re.compile(r"""\s*('[^']*'|"[^"]*"|[^,'"()\s<>=!]+)\s*(?:,|$)""")
_BARE = re.compile(r"""^[^,'"()\s<>=!]+$""")
_HOW = (
    "write NAME=VALUE, NAME!=VALUE, NAME<NUMBER (also <=, >, >=) or 'NAME in (V1, V2)', "
    "e.g. customer_id=42"
)


# -- conditions and their text -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """``arg op value``; ``value`` is a number or a string, a tuple of them for ``in``."""

    arg: str
    op: str
    value: Any

    @property
    def text(self) -> str:
        """The canonical text: ``customer_id=42``, ``region in ('eu', 'us')``."""
        if self.op == "in":
            return f"{self.arg} in ({', '.join(_value_text(v) for v in self.value)})"
        return f"{self.arg}{self.op}{_value_text(self.value)}"

    def as_json(self) -> list[Any]:
        """``[arg, op, value]`` as stored (a list for ``in``)."""
        return [self.arg, self.op, list(self.value) if self.op == "in" else self.value]

    @classmethod
    def from_json(cls, item: list[Any]) -> Condition:
        """The inverse of :meth:`as_json`."""
        arg, op, value = item
        return cls(arg, op, tuple(value) if op == "in" else value)


def _value_text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else _number_text(value)


def _number_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (1, value) if isinstance(value, str) else (0, value)


def _parse_value(token: str, where: str) -> int | float | str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    if _NUMBER.match(token):
        number = float(token)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if not token:
        raise FlagRuleError(f"{where!r} is not an argument rule: the value is missing; {_HOW}")
    if not _BARE.match(token):
        raise FlagRuleError(
            f"{where!r} is not an argument rule: {token!r} is not a value (a number, or a "
            f"string; quote one with spaces or symbols in it); {_HOW}"
        )
    return token


def parse_condition(text: str) -> Condition:
    """One condition from its text (``customer_id=42``); :class:`FlagRuleError` naming the
    part that is wrong."""
    if not isinstance(text, str):
        raise FlagRuleError(f"{text!r} is not an argument rule: {_HOW}")
    member = _MEMBERSHIP.match(text)
    if member is not None:
        name, inner = member[1], member[2]
        values: list[Any] = []
        position = 0
        for item in _ITEM.finditer(inner):
            if item.start() != position or not item[1]:
                break
            values.append(_parse_value(item[1], text))
            position = item.end()
        if not values or position != len(inner):
            raise FlagRuleError(
                f"{text!r} is not an argument rule: the list after 'in' must be values "
                "separated by commas, e.g. customer_id in (42, 43)"
            )
        return Condition(name, "in", tuple(sorted(set(values), key=_sort_key)))
    comparison = _COMPARISON.match(text)
    if comparison is None:
        raise FlagRuleError(f"{text!r} is not an argument rule: {_HOW}")
    name, op, raw = comparison[1], comparison[2], comparison[3]
    op = "=" if op == "==" else op
    value = _parse_value(raw, text)
    if op in RANGES and isinstance(value, str):
        raise FlagRuleError(
            f"{text!r}: {op} compares numbers, and {raw!r} is not a number "
            "(use = or 'in' for strings)"
        )
    return Condition(name, op, value)


def conditions(
    where: Iterable[str | Condition] = (), equals: Mapping[str, Any] | None = None
) -> tuple[Condition, ...]:
    """The conditions of one rule, from texts (``"amount>100"``) and ``name=value``
    keywords (a list or tuple value means ``in``), in canonical order. At least one."""
    found: list[Condition] = []
    for item in where:
        found.append(item if isinstance(item, Condition) else parse_condition(item))
    for name, value in (equals or {}).items():
        found.append(_keyword_condition(name, value))
    if not found:
        raise FlagRuleError("an argument rule needs at least one condition, e.g. customer_id=42")
    unique = sorted(set(found), key=lambda c: (c.arg, OPERATORS.index(c.op), c.text))
    return tuple(unique)


def _keyword_condition(name: str, value: Any) -> Condition:
    if isinstance(value, list | tuple | set | frozenset):
        items = [_checked_value(name, v) for v in value]
        if not items:
            raise FlagRuleError(f"{name}: 'in' needs at least one value")
        return Condition(name, "in", tuple(sorted(set(items), key=_sort_key)))
    return Condition(name, "=", _checked_value(name, value))


def _checked_value(name: str, value: Any) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FlagRuleError(f"{name}={value!r}: a rule's value is a number or a string")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise FlagRuleError(f"{name}={value!r}: a rule's value must be a finite number")
    return value


def rule_text(conds: Iterable[Condition]) -> str:
    """The canonical text of a rule: its conditions joined by `` and ``."""
    return " and ".join(c.text for c in conds)


def to_json(conds: Iterable[Condition]) -> str:
    """The conditions as the JSON stored in ``asyncjobs.flag_rules.conditions``."""
    return json.dumps([c.as_json() for c in conds])


# -- rules, and which jobs they fit ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """An argument rule as stored, with its counters (``FlagStore.rules()``)."""

    id: int
    job: str
    """The job's name, or :data:`ALL_JOBS`."""
    conditions: tuple[Condition, ...]
    text: str
    created_at: datetime
    created_by: str
    reason: str | None
    expires_at: datetime | None
    """When it ends by itself (``--for``/``--until``); ``None``: when removed."""
    rejected: int = 0
    skipped: int = 0

    @property
    def flag(self) -> str:
        """The flag it is recorded under in the history: ``disable_<job>`` (``disable_*``)."""
        return STOP_FLAG_PREFIX + self.job


def _parameters(spec: JobSpec) -> tuple[dict[str, inspect.Parameter], bool]:
    params = spec.signature.parameters
    named = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def takes(spec: JobSpec, names: Iterable[str]) -> bool:
    """Whether ``spec``'s job has an argument of each of ``names`` (any, with ``**kwargs``)."""
    named, open_keywords = _parameters(spec)
    return open_keywords or all(n in named for n in names)


def check_arguments(spec: JobSpec, conds: Iterable[Condition]) -> None:
    """:class:`FlagRuleError` naming the first argument ``spec``'s job does not have."""
    named, open_keywords = _parameters(spec)
    if open_keywords:
        return
    for c in conds:
        if c.arg not in named:
            known = ", ".join(named) or "none"
            raise FlagRuleError(
                f"{spec.name} has no argument {c.arg!r} (its arguments: {known}); "
                f"nothing was stored"
            )


class Matcher:
    """The rules that apply to one job, compiled against its signature.

    :meth:`match` returns a rule the call's arguments satisfy, or ``None``. Each rule with
    an equality (``=`` or ``in``) is indexed by that condition's values: a call looks up
    its argument once per indexed argument and tests the rest of only the rules found
    there. Rules without one (ranges, ``!=``) are tried one by one, fewest conditions first.
    """

    __slots__ = ("_index", "_scan", "_slots")

    def __init__(self, spec: JobSpec, rules: Iterable[Rule]) -> None:
        named, _ = _parameters(spec)
        order = list(named)
        slots: dict[str, int] = {}
        self._slots: list[tuple[str, int | None, Any]] = []

        def slot(arg: str) -> int:
            if arg not in slots:
                slots[arg] = len(self._slots)
                p = named.get(arg)
                position = None
                default = _MISSING
                if p is not None:
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                        position = order.index(arg)
                    if p.default is not p.empty:
                        default = p.default
                self._slots.append((arg, position, default))
            return slots[arg]

        Tests = tuple[tuple[int, Any], ...]
        index: dict[int, dict[Any, list[tuple[Rule, Tests]]]] = {}
        scan: list[tuple[Rule, Tests]] = []
        for rule in sorted(rules, key=lambda r: r.id):
            key = next((c for c in rule.conditions if c.op in ("=", "in")), None)
            rest = tuple((slot(c.arg), _test(c)) for c in rule.conditions if c is not key)
            if key is None:
                scan.append((rule, rest))
                continue
            table = index.setdefault(slot(key.arg), {})
            for value in _keys(key):
                table.setdefault(value, []).append((rule, rest))
        self._index = tuple(index.items())
        self._scan = tuple(sorted(scan, key=lambda entry: len(entry[1])))

    def match(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Rule | None:
        """A rule ``args``/``kwargs`` satisfy, or ``None``."""
        values = []
        for name, position, default in self._slots:
            value = kwargs.get(name, _MISSING) if kwargs else _MISSING
            if value is _MISSING:
                value = args[position] if position is not None and position < len(args) else default
            values.append(value)
        for i, table in self._index:
            value = values[i]
            try:
                found = table.get(value)
            except TypeError:  # unhashable: a list or dict argument equals no rule value
                continue
            if found is None or value.__class__ is bool:
                continue
            for rule, tests in found:
                if not tests or _all(tests, values):
                    return rule
        for rule, tests in self._scan:
            if _all(tests, values):
                return rule
        return None


def _all(tests: tuple[tuple[int, Any], ...], values: list[Any]) -> bool:
    for i, test in tests:  # noqa: SIM110 -- a plain loop: all() of a generator costs more
        if not test(values[i]):
            return False
    return True


def _keys(c: Condition) -> set[Any]:
    """The argument values equal to ``c``'s value(s): a number also as its decimal text."""
    keys: set[Any] = set()
    for value in c.value if c.op == "in" else (c.value,):
        keys.add(value)
        if not isinstance(value, str):
            keys.add(_number_text(value))
            keys.add(str(value))
    return keys


def _is_number(value: Any) -> bool:
    return value.__class__ is int or value.__class__ is float


def _test(c: Condition) -> Any:
    """A one-argument predicate for ``c``; a missing argument satisfies none."""
    bound = c.value
    if c.op in ("=", "in", "!="):
        keys = frozenset(_keys(c))
        negate = c.op == "!="

        def member(value: Any) -> bool:
            if value is _MISSING:
                return False
            try:
                found = value in keys and value.__class__ is not bool
            except TypeError:
                found = False
            return found is not negate

        return member
    if c.op == "<":
        return lambda v: _is_number(v) and v < bound
    if c.op == "<=":
        return lambda v: _is_number(v) and v <= bound
    if c.op == ">":
        return lambda v: _is_number(v) and v > bound
    return lambda v: _is_number(v) and v >= bound


def compile_rules(spec: JobSpec, own: Iterable[Rule], everywhere: Iterable[Rule]) -> Matcher | None:
    """The :class:`Matcher` of ``spec``'s own rules and the all-jobs rules that fit its
    signature, or ``None`` when none applies."""
    fitting = [r for r in everywhere if takes(spec, (c.arg for c in r.conditions))]
    rules = [*own, *fitting]
    return Matcher(spec, rules) if rules else None


# -- timed stops ------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_for(text: str) -> timedelta:
    """``"30m"`` → 30 minutes (units s, m, h, d, w); longer than zero, at most ten years."""
    match = _DURATION.match(text)
    if match is None:
        raise FlagRuleError(
            f"--for {text!r} is not a duration: use a number and a unit, e.g. 30m, 2h, 45s, 1d"
        )
    return _checked_span(timedelta(seconds=float(match[1]) * _UNIT_S[match[2]]), f"--for {text}")


def parse_until(text: str) -> datetime:
    """An ISO 8601 moment (``2026-12-01T10:00Z``); without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FlagRuleError(
            f"--until {text!r} is not a date and time: use ISO 8601, e.g. 2026-12-01T10:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _checked_span(span: timedelta, what: str) -> timedelta:
    if span <= timedelta(0):
        raise FlagRuleError(f"{what}: a timed stop must last longer than zero")
    if span.total_seconds() > MAX_SECONDS:
        raise FlagRuleError(f"{what}: a timed stop lasts at most ten years")
    return span


def end_of(
    until: datetime | timedelta | None, now: datetime | None = None, *, what: str = "until"
) -> datetime | None:
    """When a timed stop ends, in UTC: ``now + until`` for a timedelta, ``until`` for an
    aware datetime; :class:`FlagRuleError` (its message starts with ``what``) for zero, a
    moment not after now, or a naive datetime. ``None`` stays ``None`` (no end)."""
    if until is None:
        return None
    now = now or datetime.now(UTC)
    if isinstance(until, timedelta):
        return now + _checked_span(until, f"{what} {until.total_seconds():g}s")
    if not isinstance(until, datetime):
        raise FlagRuleError(f"{what}={until!r}: give a timedelta or an aware datetime")
    if until.tzinfo is None:
        raise FlagRuleError(f"{what} {until.isoformat()}: give a time zone (e.g. UTC)")
    if until <= now:
        raise FlagRuleError(
            f"{what}: {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC is not in the future "
            f"(now {now.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
        )
    _checked_span(until - now, what)
    return until.astimezone(UTC)
