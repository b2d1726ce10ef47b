"""Feature flags: the kill switch, on the default App.

A job named ``invoice_job`` is stopped by the flag ``disable_invoice_job``
(:func:`asyncjobs.flag_name`): while it is on, :func:`kill_switch` rejects the
job's enqueues and :func:`execution_gate` skips copies queued before. Flags live
in PostgreSQL and are read through a cache kept for ``ASYNCJOBS_FLAG_TTL`` seconds,
with changes pushed to every process by ``LISTEN/NOTIFY``
(:class:`FlagStore` says more).

``await flags.enable(name, actor=..., reason=...)``, :func:`disable`,
:func:`is_enabled`, :func:`history` and :func:`list` act on the default App;
on any other App, use its store: ``app.flags``.
"""

from __future__ import annotations

import builtins

from ._app import get_app
from ._flags import Flag, FlagChange, FlagEvent, FlagStore, check_flag_name, default_actor
from ._gates import execution_gate, kill_switch

__all__ = [
    "Flag",
    "FlagChange",
    "FlagEvent",
    "FlagStore",
    "check_flag_name",
    "default_actor",
    "disable",
    "enable",
    "execution_gate",
    "history",
    "is_enabled",
    "kill_switch",
    "list",
]


def _store() -> FlagStore:
    return get_app().flags


async def enable(name: str, *, actor: str | None = None, reason: str | None = None) -> FlagChange:
    """:meth:`FlagStore.enable` on the default App."""
    return await _store().enable(name, actor=actor, reason=reason)


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
