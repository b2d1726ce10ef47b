"""Feature flags in PostgreSQL, read through an in-process cache: the kill switch.

A job named ``invoice_job`` is stopped by the flag ``disable_invoice_job``
(:func:`asyncjobs.flag_name`). While that flag is on, the client middleware
:func:`~asyncjobs._gates.kill_switch` rejects its enqueues (nothing reaches Redis, ``enqueue()``
returns ``None``) and the server middleware :func:`~asyncjobs._gates.execution_gate` skips the
copies that were queued before the flag went on.

Reads are served from a snapshot of every enabled flag, loaded by one query
and kept for ``ASYNCJOBS_FLAG_TTL`` seconds; a warm check is a set lookup with
no I/O. Callers that find the snapshot stale share one in-flight load
(single-flight), bounded by ``ASYNCJOBS_FLAG_TIMEOUT``. Changes are pushed with
``LISTEN/NOTIFY`` on the channel ``asyncjobs_flags``, so every connected
process applies them at once; the TTL is the bound when a notification is lost.
If PostgreSQL is unreachable, the last snapshot keeps serving (``flags.unavailable``
is logged once per outage); if none was ever loaded, flags read as off (jobs
run) unless ``ASYNCJOBS_FLAGS_FAIL_CLOSED`` is set.

The same store carries the incident controls of :mod:`asyncjobs._controls` (paused
queues, throttled job classes): loaded with the flags, pushed by the same channel,
changed with :meth:`FlagStore.pause_queue`, :meth:`FlagStore.throttle` and their
undoing twins, audited in the same history.

This module is the store; the gates are in :mod:`asyncjobs._gates` and the
default App's functions (``await asyncjobs.flags.enable(...)``) in the public
:mod:`asyncjobs.flags`. On any App the store is ``app.flags``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import getpass
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog

from . import _controls as controls
from . import _logs as logs
from ._controls import NO_CONTROLS, Control, ControlChange, Controls, Rate
from ._exceptions import ControlError, FlagNameError, UnknownJobError
from ._naming import snake_case

if TYPE_CHECKING:
    from ._jobs import Registry
    from ._settings import Settings


class Database(Protocol):
    """What a flag store needs of its App: the settings and the PostgreSQL pool."""

    settings: Settings
    registry: Registry

    async def db(self) -> asyncpg.Pool: ...

    def has_db(self) -> bool: ...


CHANNEL = "asyncjobs_flags"
_FLUSH_AFTER_S = 1.0
"""Counted rejections and skips reach PostgreSQL within about this long."""
_GRACE_S = 0.05
"""How much longer than ``flag_timeout`` a caller waits for a shared load."""
_VALID = re.compile(r"^[a-z][a-z0-9_]{0,127}$")
_log = structlog.get_logger("asyncjobs.flags")


def check_flag_name(name: str) -> str:
    """``name`` if it is a valid flag name, else :class:`FlagNameError` saying why."""
    if not isinstance(name, str) or not _VALID.match(name):
        raise FlagNameError(
            f"{name!r} is not a valid flag name: use lower-case letters, digits and "
            "underscores, starting with a letter, at most 128 characters (e.g. disable_invoice_job)"
        )
    return name


def default_actor() -> str:
    """Who is changing a flag when no ``actor`` is given: the OS user."""
    try:
        return getpass.getuser()
    except Exception:  # no user name for this uid (e.g. a bare container)
        return "unknown"


@dataclass(frozen=True, slots=True)
class FlagChange:
    """The result of :meth:`FlagStore.enable` / :meth:`FlagStore.disable`."""

    name: str
    old: bool | None
    new: bool
    changed: bool


@dataclass(frozen=True, slots=True)
class Flag:
    """A flag as :meth:`FlagStore.list` reports it, with its counters."""

    name: str
    enabled: bool
    updated_at: datetime
    updated_by: str
    reason: str | None
    rejected: int
    skipped: int


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """One row of a flag's history."""

    name: str
    old_value: bool | None
    new_value: bool
    actor: str
    reason: str | None
    at: datetime
    detail: str | None = None
    """For a throttle (``throttle:<job>``): the rate set, e.g. ``10/s``."""


_SET_SQL = """
INSERT INTO asyncjobs.flags (name, enabled, updated_by, reason) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE
SET enabled = EXCLUDED.enabled, updated_at = now(), updated_by = EXCLUDED.updated_by,
    reason = EXCLUDED.reason
"""
_HISTORY_SQL = """
INSERT INTO asyncjobs.flag_history (name, old_value, new_value, actor, reason)
VALUES ($1, $2, $3, $4, $5)
"""
_FLUSH_SQL = """
INSERT INTO asyncjobs.flag_counters AS c (name, kind, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (name, kind) DO UPDATE SET count = c.count + EXCLUDED.count, last_at = now()
"""
_LIST_SQL = """
SELECT f.name, f.enabled, f.updated_at, f.updated_by, f.reason,
       coalesce(r.count, 0) AS rejected, coalesce(s.count, 0) AS skipped
FROM asyncjobs.flags f
LEFT JOIN asyncjobs.flag_counters r ON r.name = f.name AND r.kind = 'rejected'
LEFT JOIN asyncjobs.flag_counters s ON s.name = f.name AND s.kind = 'skipped'
ORDER BY f.name
"""


class FlagStore:
    """Flags of one App: the PostgreSQL store, the cache and the counters."""

    def __init__(self, app: Database) -> None:
        self._app = app
        settings = app.settings
        self.ttl = settings.flag_ttl
        self.timeout = settings.flag_timeout
        self.fail_closed = settings.flags_fail_closed
        self._snapshot: frozenset[str] | None = None
        self._fresh_until = 0.0
        self._loading: asyncio.Future[None] | None = None
        self._changes: dict[str, bool] | None = None  # notified during the load in flight
        self._flusher: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[None] | None = None
        self._listener: Any = None
        self._unavailable = False
        self._counts: Counter[tuple[str, str]] = Counter()
        self._controls: Controls = NO_CONTROLS
        self._reload_controls = False  # a change was notified while a load ran
        self._watchers: builtins.list[Callable[[], None]] = []
        self.loads = 0
        """How many snapshot queries this store ran (for tests and benchmarks)."""

    # -- the hot path -----------------------------------------------------

    def cached(self, name: str) -> bool | None:
        """The cached value of ``name``, or ``None`` when the snapshot is stale. No I/O."""
        if time.monotonic() < self._fresh_until:
            snapshot = self._snapshot
            return name in snapshot if snapshot is not None else self.fail_closed
        return None

    async def is_enabled(self, name: str) -> bool:
        """Whether flag ``name`` is on; from the cache when fresh, else after one shared load."""
        value = self.cached(name)
        if value is not None:
            return value
        await self.refresh()
        snapshot = self._snapshot
        return name in snapshot if snapshot is not None else self.fail_closed

    def count(self, name: str, kind: str) -> None:
        """Count a rejected enqueue or skipped execution; written to PostgreSQL in batches,
        within about a second (with the next snapshot load, or on their own)."""
        self._counts[(name, kind)] += 1
        if self._flusher is None or self._flusher.done():
            # Without an event loop, the next load or close() writes them.
            with contextlib.suppress(RuntimeError):
                self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(_FLUSH_AFTER_S)
        except asyncio.CancelledError:
            # close(), or the end of the event loop (asyncio.run cancels what is left, as
            # in a script that enqueues once and exits): write what was counted first.
            await self._flush_pending()
            raise
        await self._flush_pending()

    async def _flush_pending(self) -> None:
        if not self._counts:
            return
        try:
            async with asyncio.timeout(self.timeout):
                pool = await self._app.db()
                async with pool.acquire() as conn:
                    await self._flush_counts(conn)
        except Exception:  # kept for the next load or flush
            pass

    # -- controls: paused queues, throttles (asyncjobs._controls) ---------

    def controls_now(self) -> Controls:
        """The paused queues and throttles as last loaded. No I/O and never waits: when the
        snapshot is stale, a reload starts in the background (a worker's claim loop reads
        this before each claim)."""
        if time.monotonic() >= self._fresh_until:
            self._refresh_soon()
        return self._controls

    async def controls(self) -> Controls:
        """The paused queues and throttles, loaded first if the snapshot is stale (waits at
        most ``flag_timeout``; then the last known, or none)."""
        if time.monotonic() >= self._fresh_until:
            await self.refresh()
        return self._controls

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (in the event loop) whenever a load finds the controls changed."""
        self._watchers.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        with contextlib.suppress(ValueError):
            self._watchers.remove(callback)

    def _set_controls(self, new: Controls) -> None:
        if new == self._controls:
            return
        self._controls = new
        for callback in builtins.list(self._watchers):
            try:
                callback()
            except Exception as exc:  # a watcher's bug must not break the flag store
                _log.error(logs.WORKER_ERROR, error=f"controls watcher failed: {exc!r}")

    def _refresh_soon(self) -> None:
        """Start a load unless one runs (no waiting; outside an event loop, nothing)."""
        loading = self._loading
        if loading is not None and not loading.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loading = loop.create_task(self._load())

    # -- loading ----------------------------------------------------------

    async def refresh(self) -> None:
        """Load the snapshot now, sharing a load already in flight. Never raises.

        Waits at most ``flag_timeout`` (and a little): a load stuck on a PostgreSQL that
        does not answer goes on in the background while callers use what they have.
        """
        loading = self._loading
        if loading is None or loading.done():
            loading = self._loading = asyncio.ensure_future(self._load())
        try:
            await asyncio.wait_for(asyncio.shield(loading), self.timeout + _GRACE_S)
        except TimeoutError:
            self._unreachable(TimeoutError(f"no answer within {self.timeout}s"))

    async def _load(self) -> None:
        # Changes notified while this load runs are newer than (or equal to) what it
        # reads: they are laid over its result, so a load never undoes a change.
        self._changes = {}
        pool: Any = None
        conn: Any = None
        try:
            async with asyncio.timeout(self.timeout):
                pool = await self._app.db()
                conn = await pool.acquire()
                self.loads += 1
                rows = await conn.fetch("SELECT name FROM asyncjobs.flags WHERE enabled")
                loaded_controls = await _load_controls(conn)
                try:
                    await self._flush_counts(conn)
                except asyncpg.PostgresError as exc:  # counts kept; the snapshot is good
                    _log.warning(logs.FLAGS_UNAVAILABLE, error=f"counts not saved: {exc}")
            loaded = {r[0] for r in rows}
            for name, value in self._changes.items():
                if value:
                    loaded.add(name)
                else:
                    loaded.discard(name)
            self._snapshot = frozenset(loaded)
            self._fresh_until = time.monotonic() + self.ttl
            self._set_controls(loaded_controls)
            if self._unavailable:
                self._unavailable = False
                _log.info(logs.FLAGS_RECOVERED)
            if self._listener is None and (self._listening is None or self._listening.done()):
                # Not awaited: a slow LISTEN connect must not hold up the callers.
                self._listening = asyncio.ensure_future(self._listen())
        except Exception as exc:  # the store is down or slow: serve what we have
            if conn is not None:
                conn.terminate()  # do not wait for a server that may not answer
            self._unreachable(exc)
        finally:
            self._changes = None
            if self._reload_controls:  # changed while this load ran: read them again
                self._reload_controls = False
                self._fresh_until = 0.0
                asyncio.get_running_loop().call_soon(self._refresh_soon)
            if conn is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout):
                        await pool.release(conn)

    def _unreachable(self, exc: BaseException) -> None:
        """Serve the last snapshot (or the fail-open/closed default) for a while; say so once."""
        if self._app.settings.database_url is None:
            # No store configured (a process that only enqueues, say): no kill switch here,
            # which is a choice, not an outage.
            self._fresh_until = time.monotonic() + 60.0
            if not self._unavailable:
                self._unavailable = True
                _log.debug(logs.FLAGS_UNAVAILABLE, error="ASYNCJOBS_DATABASE_URL is not set")
            return
        self._fresh_until = time.monotonic() + min(self.ttl, 1.0)
        if self._unavailable:
            return
        self._unavailable = True
        hint = " (run `asyncjobs migrate`)" if "does not exist" in str(exc) else ""
        _log.warning(
            logs.FLAGS_UNAVAILABLE,
            error=f"{type(exc).__name__}: {exc or 'timed out'}{hint}",
            serving="last known values"
            if self._snapshot is not None
            else ("all disabled (fail closed)" if self.fail_closed else "all off (fail open)"),
        )

    async def _flush_counts(self, conn: Any) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, Counter()
        try:
            await conn.execute(
                _FLUSH_SQL,
                [name for name, _ in counts],
                [kind for _, kind in counts],
                [*counts.values()],
            )
        except BaseException:
            self._counts.update(counts)  # keep them for the next flush
            raise

    async def _listen(self) -> None:
        """Subscribe to change notifications on a dedicated connection (best effort)."""
        conn: Any = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await asyncpg.connect(self._app.settings.require_database_url())
                await conn.add_listener(CHANNEL, self._notified)
            conn.add_termination_listener(self._listener_lost)
        except BaseException as exc:  # cancelled by close() too: never leave it open
            if conn is not None:
                conn.terminate()
            if not isinstance(exc, Exception):
                raise
            _log.warning(logs.FLAGS_UNAVAILABLE, error=f"LISTEN failed: {exc}", serving="ttl")
            return
        self._listener = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == controls.CONTROLS_CHANGED:
            if self._changes is not None:
                self._reload_controls = True
            else:
                self._fresh_until = 0.0
                self._refresh_soon()
            return
        name, _, value = payload.rpartition(":")
        if name and self._changes is not None:
            self._changes[name] = value == "1"
        snapshot = self._snapshot
        if snapshot is None or not name:
            self._fresh_until = 0.0  # nothing to patch: load on next read
            return
        self._snapshot = snapshot | {name} if value == "1" else snapshot - {name}

    def _listener_lost(self, _conn: Any) -> None:
        self._listener = None
        self._fresh_until = 0.0  # changes may have been missed: reload on next read

    # -- the operator's side ---------------------------------------------

    async def enable(
        self, name: str, *, actor: str | None = None, reason: str | None = None
    ) -> FlagChange:
        """Turn flag ``name`` on (for ``disable_<job>``: stop that job). Recorded in history."""
        return await self._set(name, True, actor, reason)

    async def disable(
        self, name: str, *, actor: str | None = None, reason: str | None = None
    ) -> FlagChange:
        """Turn flag ``name`` off. Recorded in history."""
        return await self._set(name, False, actor, reason)

    async def _set(
        self, name: str, value: bool, actor: str | None, reason: str | None
    ) -> FlagChange:
        check_flag_name(name)
        who = actor or default_actor()
        pool = await self._app.db()
        async with pool.acquire() as conn, conn.transaction():
            old = await conn.fetchval(
                "SELECT enabled FROM asyncjobs.flags WHERE name = $1 FOR UPDATE", name
            )
            if old is value:
                return FlagChange(name, old, value, changed=False)
            await conn.execute(_SET_SQL, name, value, who, reason)
            await conn.execute(_HISTORY_SQL, name, old, value, who, reason)
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{name}:{int(value)}")
        if self._changes is not None:
            self._changes[name] = value
        snapshot = self._snapshot
        if snapshot is not None:  # this process need not wait for its own notification
            self._snapshot = snapshot | {name} if value else snapshot - {name}
        _log.info(logs.FLAG_CHANGED, flag=name, old=old, new=value, actor=who, reason=reason)
        return FlagChange(name, old, value, changed=True)

    async def throttle(
        self, job: str, rate: str, *, actor: str | None = None, reason: str | None = None
    ) -> ControlChange:
        """Let workers together start at most ``rate`` (``"10/s"``, ``"600/m"``,
        ``"5000/h"``) jobs of class ``job`` (a registered job's name); the rest wait,
        deferred, and are not counted as tries. Setting another rate replaces it.

        Raises :class:`ControlError` for a malformed rate or a job this App does not
        know (its registry is checked: import the job modules first); nothing is stored.
        """
        parsed = controls.parse_rate(rate)
        name = self._registered_job(job)
        return await self._change(controls.THROTTLE, name, parsed, actor, reason)

    async def unthrottle(
        self, job: str, *, actor: str | None = None, reason: str | None = None
    ) -> ControlChange:
        """Remove ``job``'s throttle (any name is accepted, so a throttle of a job since
        renamed can still go). ``changed`` is False if it had none."""
        if not isinstance(job, str) or not job:
            raise ControlError(f"{job!r} is not a job name")
        name = job if job in self._app.registry else snake_case(job)
        return await self._change(controls.THROTTLE, name, None, actor, reason)

    async def pause_queue(
        self, queue: str, *, actor: str | None = None, reason: str | None = None
    ) -> ControlChange:
        """Stop every worker from starting jobs of ``queue`` (within milliseconds while
        PostgreSQL notifications flow, within ``ASYNCJOBS_FLAG_TTL`` otherwise); enqueues
        are still accepted. :class:`ControlError` for a malformed queue name."""
        controls.check_queue_name(queue)
        return await self._change(controls.PAUSE, queue, True, actor, reason)

    async def resume_queue(
        self, queue: str, *, actor: str | None = None, reason: str | None = None
    ) -> ControlChange:
        """Let workers start jobs of ``queue`` again. ``changed`` is False if not paused."""
        controls.check_queue_name(queue)
        return await self._change(controls.PAUSE, queue, None, actor, reason)

    async def list_controls(self) -> builtins.list[Control]:
        """Every paused queue and throttle, with who set it, when and why."""
        pool = await self._app.db()
        rows = await pool.fetch(controls.LIST_SQL)
        return [controls.control_of(r) for r in rows]

    def _registered_job(self, job: str) -> str:
        registry = self._app.registry
        if not isinstance(job, str) or not job:
            raise ControlError(f"{job!r} is not a job name")
        if not len(registry):
            raise ControlError(
                f"cannot check that a job {job!r} exists: no jobs are registered here; set "
                "ASYNCJOBS_IMPORTS to the modules that define your jobs (or import them)"
            )
        for candidate in (job, snake_case(job)):
            if candidate in registry:
                return candidate
        try:
            registry.get(job)
        except UnknownJobError as exc:
            raise ControlError(f"cannot throttle: {exc}") from None
        return job  # pragma: no cover  (get() raised)

    async def _change(
        self,
        kind: str,
        target: str,
        value: Rate | bool | None,
        actor: str | None,
        reason: str | None,
    ) -> ControlChange:
        """Set (``value`` a Rate or True) or remove (None) one control, with its history row,
        in one transaction, then notify every process."""
        who = actor or default_actor()
        entry = (
            controls.pause_entry(target)
            if kind == controls.PAUSE
            else (controls.throttle_entry(target))
        )
        pool = await self._app.db()
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(controls.GET_SQL, kind, target)
            old: Rate | bool | None = None
            if row is not None:
                old = Rate(row[0], row[1]) if kind == controls.THROTTLE else True
            if old == value:
                return ControlChange(kind, target, _said(old), _said(value), changed=False)
            if value is None:
                await conn.execute(controls.DELETE_SQL, kind, target)
            else:
                limit, period = (
                    (value.limit, value.period_s)
                    if isinstance(value, Rate)
                    else (
                        None,
                        None,
                    )
                )
                await conn.execute(controls.SET_SQL, kind, target, limit, period, who, reason)
            detail = str(value) if isinstance(value, Rate) else None
            await conn.execute(
                controls.HISTORY_SQL, entry, old is not None, value is not None, who, reason, detail
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, controls.CONTROLS_CHANGED)
        self._fresh_until = 0.0  # this process reloads at its next read
        change = ControlChange(kind, target, _said(old), _said(value), changed=True)
        _log.info(
            logs.CONTROL_CHANGED,
            control=entry,
            old=change.was,
            new=change.now,
            actor=who,
            reason=reason,
        )
        return change

    async def list(self) -> builtins.list[Flag]:
        """Every flag with its state, last change and counters (pending counts flushed first)."""
        pool = await self._app.db()
        async with pool.acquire() as conn:
            await self._flush_counts(conn)
            rows = await conn.fetch(_LIST_SQL)
        return [Flag(**dict(r)) for r in rows]

    async def history(
        self, name: str | None = None, *, limit: int = 100
    ) -> builtins.list[FlagEvent]:
        """Changes, newest first; of one flag if ``name`` is given."""
        if name is not None and not controls.is_control_entry(name):
            check_flag_name(name)
        pool = await self._app.db()
        rows = await pool.fetch(
            "SELECT name, old_value, new_value, actor, reason, at, detail "
            "FROM asyncjobs.flag_history "
            "WHERE $1::text IS NULL OR name = $1 ORDER BY at DESC, id DESC LIMIT $2",
            name,
            limit,
        )
        return [FlagEvent(**dict(r)) for r in rows]

    async def close(self) -> None:
        """Flush pending counts (best effort) and close the notification connection."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        listening, self._listening = self._listening, None
        if listening is not None and not listening.done():
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove_termination_listener(self._listener_lost)
            await listener.close()
        if self._counts and self._app.has_db():
            try:
                async with asyncio.timeout(self.timeout):
                    pool = await self._app.db()
                    async with pool.acquire() as conn:
                        await self._flush_counts(conn)
            except Exception as exc:
                _log.warning(logs.FLAGS_UNAVAILABLE, error=f"counts not saved: {exc}")


def _said(value: Rate | bool | None) -> str | None:
    """A control's state in words: a rate (``10/s``), ``paused``, or ``None`` (not set)."""
    if value is None:
        return None
    return str(value) if isinstance(value, Rate) else "paused"


async def _load_controls(conn: Any) -> Controls:
    """The controls table, or none while it does not exist yet (before ``asyncjobs
    migrate`` reached 0006: the flags must keep working)."""
    try:
        return controls.controls_of(await conn.fetch(controls.LOAD_SQL))
    except asyncpg.UndefinedTableError:
        return NO_CONTROLS
