"""The kill switch at both ends: the client gate and the execution gate.

:func:`kill_switch` is client middleware: while a job's ``disable_<job>`` flag is on, or
one of its argument rules matches the call (``customer_id=42``), its enqueues are
rejected (nothing reaches Redis, ``enqueue()`` returns ``None``). :func:`execution_gate`
is server middleware: it skips the copies that were queued before. Both read the App's
flag store (``request.app.flags.check``), on the warm path without a coroutine; an App
puts them outermost unless ``App(kill_switch=False)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from . import _logs as logs
from ._core import EnqueueRequest, ExecutionRequest

_log = structlog.get_logger("asyncjobs.flags")

CallNext = Callable[[Any], Awaitable[Any]]


class _Gate:
    """Middleware that stops a job while its flag is on or one of its argument rules
    matches: ``outcome`` is what is counted (``rejected``, ``skipped``) and ``event`` what
    is logged. A warm check is a plain call that hands the request on: no coroutine of
    its own (this runs for every job)."""

    def __init__(self, outcome: str, event: str, doc: str) -> None:
        self.outcome, self.event, self.__doc__ = outcome, event, doc

    def __call__(self, request: EnqueueRequest | ExecutionRequest, call_next: CallNext) -> Any:
        if request.app.flags.check(request.spec, request.args, request.kwargs) is False:
            return call_next(request)
        return self._checked(request, call_next)

    async def _checked(
        self, request: EnqueueRequest | ExecutionRequest, call_next: CallNext
    ) -> Any:
        store, spec = request.app.flags, request.spec
        verdict = await store.decide(spec, request.args, request.kwargs)
        if verdict is False:
            return await call_next(request)
        about: dict[str, Any] = {"job": spec.name}
        if verdict is True:
            store.count(spec.flag, self.outcome)
            reason = "flag"
        else:
            store.count_rule(verdict, self.outcome)
            reason = "rule"
            about.update(rule=verdict.text, rule_id=verdict.id)
        meter = request.app.instruments.job(spec.name)
        if isinstance(request, ExecutionRequest):
            about.update(job_id=request.job_id, job_try=request.job_try)
            request.skipped = True
            meter.skipped(request.job_id)
        else:
            meter.rejected(reason)
        _log.info(self.event, **about, reason=reason, flag=spec.flag)
        return None

    def __repr__(self) -> str:
        return f"<asyncjobs gate: {self.outcome} while the job's flag or a rule is on>"


kill_switch = _Gate(
    "rejected",
    logs.JOB_REJECTED,
    "Client middleware: reject the enqueue of a job whose ``disable_<job>`` flag is on, or "
    "whose arguments match one of its argument rules.",
)
execution_gate = _Gate(
    "skipped",
    logs.JOB_SKIPPED,
    "Server middleware: skip a job of a disabled class (or one an argument rule matches) "
    "that was queued before the flag or rule.",
)
