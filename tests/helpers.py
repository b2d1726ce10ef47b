"""Waiting on real state with a deadline, and reading a process's JSON log lines.

No test sleeps for a fixed time or measures how long something took: it waits
for the state it needs (:func:`eventually`, :func:`wait_until`,
:func:`wait_for_event`), each wait failing with a clear message at its
deadline. Log lines are parsed as JSON and compared on keys and values
(:func:`log_events`), never matched on their spelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from asyncjobs.testing import ServiceProcess

T = TypeVar("T")

POLL = 0.02
"""Seconds between two looks at the state a test waits for."""


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within: float = 30.0,
    interval: float = POLL,
    what: str = "",
) -> T:
    """Call ``check`` (a function, or one returning an awaitable) every ``interval`` seconds
    until it returns a true value, and return that value.

    Raises ``AssertionError`` naming ``what`` and the last value seen when ``within``
    seconds pass first, a check that does not answer counting as a false one.
    """
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), interval)):
                last = check()
                if inspect.isawaitable(last):
                    last = await last
        except TimeoutError:
            last = "(no answer)"
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within}s: {what or _name(check)} (last: {last!r})")
        await asyncio.sleep(interval)


def wait_until(
    check: Callable[[], T], *, within: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """:func:`eventually` for code outside an event loop (``check`` is a plain function)."""
    deadline = time.monotonic() + within
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within}s: {what or _name(check)} (last: {last!r})")
        time.sleep(interval)


@contextlib.asynccontextmanager
async def bounded(seconds: float, what: str) -> AsyncIterator[None]:
    """Fail the test if the block runs longer than ``seconds`` (it is cancelled then).

    For a call whose bound is the behaviour under test ("fails fast instead of
    hanging"): a deadline on the call, not a measurement of it.
    """
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if deadline.expired():
            raise AssertionError(f"not within {seconds}s: {what}") from None
        raise


def _name(check: Callable[..., Any]) -> str:
    return getattr(check, "__qualname__", repr(check))


# -- JSON log lines ---------------------------------------------------------


def log_events(
    lines: Iterable[str], event: str | None = None, **fields: Any
) -> list[dict[str, Any]]:
    """The JSON log lines among ``lines`` (a process's output), parsed, in order.

    With ``event``, only those of that event; with ``fields``, only those whose keys
    have these values. Lines that are not JSON objects (a ``print``, say) are left
    out; a line that starts like one but does not parse raises.
    """
    found = []
    for line in list(lines):
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if event is not None and entry.get("event") != event:
            continue
        if any(entry.get(key) != value for key, value in fields.items()):
            continue
        found.append(entry)
    return found


class ProcessExited(AssertionError):
    """The process a test waited on exited without doing what the test waited for."""


def _logged(
    process: ServiceProcess, event: str, count: int, fields: dict[str, Any]
) -> Callable[[], list[dict[str, Any]] | None]:
    """A check for :func:`eventually`: the events once ``count`` were logged, else None;
    raises once the process has exited without logging them."""
    exited_at: float | None = None

    def check() -> list[dict[str, Any]] | None:
        nonlocal exited_at
        found = log_events(process.lines, event, **fields)
        if len(found) >= count:
            return found
        if not process.alive():
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 1.0:  # its last lines have been read by now
                raise ProcessExited(
                    f"the process exited ({_code(process)}) having logged {event!r} "
                    f"{len(found)} of {count} time(s):\n{process.output[-4000:]}"
                )
        return None

    return check


async def wait_for_event(
    process: ServiceProcess,
    event: str,
    *,
    count: int = 1,
    within: float = 30.0,
    **fields: Any,
) -> list[dict[str, Any]]:
    """Wait until ``process`` logged ``event`` (with ``fields``) ``count`` times; return
    those events.

    Fails with the process's output at the deadline, or as soon as the process has
    exited without logging them.
    """
    check = _logged(process, event, count, fields)
    try:
        return await eventually(check, within=within, what=f"{count}x {event!r}")
    except ProcessExited:
        raise
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{process.output[-4000:]}") from None


def wait_for_event_blocking(
    process: ServiceProcess,
    event: str,
    *,
    count: int = 1,
    within: float = 30.0,
    **fields: Any,
) -> list[dict[str, Any]]:
    """:func:`wait_for_event` for a test outside an event loop."""
    check = _logged(process, event, count, fields)
    try:
        return wait_until(check, within=within, interval=POLL, what=f"{count}x {event!r}")
    except ProcessExited:
        raise
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{process.output[-4000:]}") from None


def _code(process: ServiceProcess) -> int | None:
    return process.process.returncode if process.process is not None else None


# -- a port where no server answers -------------------------------------------


class Nowhere:
    """A port on 127.0.0.1 that accepts each connection and closes it at once, counting
    them in ``dialled``: what dials it fails as it would against a server that is down,
    and the test sees that it tried (``port=0``: a free port)."""

    def __init__(self, port: int = 0) -> None:
        self.dialled = 0
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> Nowhere:
        self._server = await asyncio.start_server(self._hang_up, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _hang_up(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.dialled += 1
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Nowhere:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def database_url(self) -> str:
        return f"postgresql://nobody@127.0.0.1:{self.port}/nothing"


# -- what the jobs of tests/workerjobs.py record --------------------------------


async def recorded_runs(
    redis: aioredis.Redis, count: int, within: float = 20.0
) -> list[dict[str, Any]]:
    """Wait until the jobs of ``tests.workerjobs`` recorded ``count`` runs in the list
    ``runs``; return every run recorded (its job, arguments and job id)."""
    await eventually(
        lambda: _at_least(redis.llen("runs"), count),
        within=within,
        what=f"{count} recorded run(s)",
    )
    return [json.loads(r) for r in await redis.lrange("runs", 0, -1)]


async def _at_least(value: Awaitable[int], count: int) -> bool:
    return int(await value) >= count


async def job_finished(redis: aioredis.Redis, job_id: str, within: float = 20.0) -> None:
    """Wait until the job ``job_id`` is over for good: neither queued, waiting for a retry,
    nor running (its arq job and in-progress keys are gone)."""

    async def gone() -> bool:
        return not await redis.exists(f"arq:job:{job_id}", f"arq:in-progress:{job_id}")

    await eventually(gone, within=within, what=f"job {job_id} finished")
