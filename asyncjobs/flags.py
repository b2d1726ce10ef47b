"""Feature flags: the kill switch, on the default App.

A job named ``invoice_job`` is stopped by the flag ``disable_invoice_job``
(:func:`asyncjobs.flag_name`): while it is on, :func:`kill_switch` rejects the
job's enqueues and :func:`execution_gate` skips copies queued before. Flags live
in PostgreSQL and are read through a cache kept for ``ASYNCJOBS_FLAG_TTL`` seconds,
with changes pushed to every process by ``LISTEN/NOTIFY``
(:class:`FlagStore` says more).

``await flags.enable(name, actor=..., reason=..., until=...)``, :func:`disable`,
:func:`is_enabled`, :func:`history` and :func:`list` act on the default App, and so do
the argument rules, which stop only the jobs whose named argument matches:
``await flags.disable_where("invoice_job", customer_id=42, reason=...)``,
:func:`enable_where` and :func:`rules` (:mod:`asyncjobs._rules` says how they match).
``until`` (a timedelta, or an aware datetime) makes a stop end by itself. On any other
App, use its store: ``app.flags``.
So do the incident controls (:mod:`asyncjobs._controls`): :func:`throttle` /
:func:`unthrottle` a job class, :func:`pause_queue` / :func:`resume_queue`.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any

from ._app import get_app
from ._controls import Control, ControlChange, Controls, Rate, parse_rate
from ._flags import (
    Flag,
    FlagChange,
    FlagEvent,
    FlagStore,
    RuleChange,
    check_flag_name,
    default_actor,
)
from ._gates import execution_gate, kill_switch
from ._rules import Condition, Rule

__all__ = [
    "Condition",
    "Control",
    "ControlChange",
    "Controls",
    "Flag",
    "FlagChange",
    "FlagEvent",
    "FlagStore",
    "Rate",
    "Rule",
    "RuleChange",
    "check_flag_name",
    "default_actor",
    "disable",
    "disable_where",
    "enable",
    "enable_where",
    "execution_gate",
    "history",
    "is_enabled",
    "kill_switch",
    "list",
    "parse_rate",
    "pause_queue",
    "resume_queue",
    "rules",
    "throttle",
    "unthrottle",
]


def _store() -> FlagStore:
    return get_app().flags


async def enable(
    name: str,
    *,
    actor: str | None = None,
    reason: str | None = None,
    until: datetime | timedelta | None = None,
) -> FlagChange:
    """:meth:`FlagStore.enable` on the default App."""
    return await _store().enable(name, actor=actor, reason=reason, until=until)


async def disable(name: str, *, actor: str | None = None, reason: str | None = None) -> FlagChange:
    """:meth:`FlagStore.disable` on the default App."""
    return await _store().disable(name, actor=actor, reason=reason)


async def is_enabled(name: str) -> bool:
    """:meth:`FlagStore.is_enabled` on the default App."""
    return await _store().is_enabled(check_flag_name(name))


async def history(name: str | None = None, *, limit: int = 100) -> builtins.list[FlagEvent]:
    """:meth:`FlagStore.history` on the default App."""
    return await _store().history(name, limit=limit)


async def list() -> builtins.list[Flag]:  # `flags.list()`: the operator's spelling
    """:meth:`FlagStore.list` on the default App."""
    return await _store().list()


async def disable_where(
    job: Any,
    *where: str | Condition,
    actor: str | None = None,
    reason: str | None = None,
    until: datetime | timedelta | None = None,
    **equals: Any,
) -> RuleChange:
    """:meth:`FlagStore.disable_where` on the default App."""
    return await _store().disable_where(
        job, *where, actor=actor, reason=reason, until=until, **equals
    )


async def enable_where(
    job: Any,
    *where: str | Condition,
    actor: str | None = None,
    reason: str | None = None,
    **equals: Any,
) -> RuleChange:
    """:meth:`FlagStore.enable_where` on the default App."""
    return await _store().enable_where(job, *where, actor=actor, reason=reason, **equals)


async def rules(job: str | None = None) -> builtins.list[Rule]:
    """:meth:`FlagStore.rules` on the default App."""
    return await _store().rules(job)


async def throttle(
    job: str, rate: str, *, actor: str | None = None, reason: str | None = None
) -> ControlChange:
    """:meth:`FlagStore.throttle` on the default App."""
    return await _store().throttle(job, rate, actor=actor, reason=reason)


async def unthrottle(
    job: str, *, actor: str | None = None, reason: str | None = None
) -> ControlChange:
    """:meth:`FlagStore.unthrottle` on the default App."""
    return await _store().unthrottle(job, actor=actor, reason=reason)


async def pause_queue(
    queue: str, *, actor: str | None = None, reason: str | None = None
) -> ControlChange:
    """:meth:`FlagStore.pause_queue` on the default App."""
    return await _store().pause_queue(queue, actor=actor, reason=reason)


async def resume_queue(
    queue: str, *, actor: str | None = None, reason: str | None = None
) -> ControlChange:
    """:meth:`FlagStore.resume_queue` on the default App."""
    return await _store().resume_queue(queue, actor=actor, reason=reason)
