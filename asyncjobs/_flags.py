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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog

from . import _controls as controls
from . import _flag_writes as writes
from . import _logs as logs
from ._controls import NO_CONTROLS, Control, ControlChange, Controls, Rate
from ._exceptions import (
    ConfigurationError,
    ControlError,
    FlagNameError,
    FlagRuleError,
    UnknownJobError,
)
from ._naming import STOP_FLAG_PREFIX, snake_case
from ._rules import (
    ALL_JOBS,
    ALL_JOBS_FLAG,
    Condition,
    Matcher,
    Rule,
    check_arguments,
    compile_rules,
    conditions,
    end_of,
    rule_text,
    takes,
    to_json,
)

if TYPE_CHECKING:
    from ._jobs import JobSpec, Registry
    from ._settings import Settings


class Database(Protocol):
    """What a flag store needs of its App: the settings, the PostgreSQL pool, and where
    to LISTEN."""

    settings: Settings
    registry: Registry

    async def db(self) -> asyncpg.Pool: ...

    async def session_url(self, what: str) -> str | None: ...

    def has_db(self) -> bool: ...


CHANNEL, RELOAD = writes.CHANNEL, writes.RELOAD
_FLUSH_AFTER_S = 1.0
"""Counted rejections and skips reach PostgreSQL within about this long."""
_END_TIMEOUT_S = 5.0
"""How long ending the timed stops that are over may take (apart from a load)."""
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
    expires_at: datetime | None = None
    """When an enabled flag turns itself off (a timed stop), else ``None``."""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """The result of :meth:`FlagStore.disable_where` / :meth:`FlagStore.enable_where`."""

    job: str
    """The job's name, or ``"*"`` for a rule on every job class (``--all-jobs``)."""
    rule: str
    """The rule's canonical text, e.g. ``customer_id=42``."""
    added: bool
    """Whether the rule is in force after the call."""
    changed: bool
    """``False``: the rule was already there (with the same end), or not there to remove."""
    expires_at: datetime | None = None


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
    expires_at: datetime | None = None
    """When it turns itself off (a timed stop), else ``None``."""


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """One row of a flag's history."""

    name: str
    old_value: bool | None
    new_value: bool
    actor: str
    reason: str | None
    at: datetime
    rule: str | None = None
    """The argument rule added (``new_value`` true) or removed, if the change was one."""
    expires_at: datetime | None = None
    """The end the change set: the stop (or rule) ends by itself then."""
    detail: str | None = None
    """For a throttle (``throttle:<job>``): the rate set, e.g. ``10/s``."""


_FLUSH_SQL = """
INSERT INTO asyncjobs.flag_counters AS c (name, kind, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (name, kind) DO UPDATE SET count = c.count + EXCLUDED.count, last_at = now()
"""
_FLUSH_RULES_SQL = """
UPDATE asyncjobs.flag_rules r
SET rejected = r.rejected + u.rejected, skipped = r.skipped + u.skipped
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, rejected, skipped)
WHERE r.id = u.id
"""
_LIST_SQL = """
SELECT f.name, f.enabled, f.updated_at, f.updated_by, f.reason,
       coalesce(r.count, 0) AS rejected, coalesce(s.count, 0) AS skipped, f.expires_at
FROM asyncjobs.flags f
LEFT JOIN asyncjobs.flag_counters r ON r.name = f.name AND r.kind = 'rejected'
LEFT JOIN asyncjobs.flag_counters s ON s.name = f.name AND s.kind = 'skipped'
ORDER BY f.name
"""
_LOAD_FLAGS_SQL = """
SELECT name, expires_at, expires_at <= now() AS ended, now() AS db_now
FROM asyncjobs.flags WHERE enabled
"""
_LOAD_RULES_SQL = """
SELECT id, job, conditions, rule, created_at, created_by, reason, expires_at,
       rejected, skipped, expires_at <= now() AS ended, now() AS db_now
FROM asyncjobs.flag_rules ORDER BY id
"""
_RULES_SQL = """
SELECT id, job, conditions, rule, created_at, created_by, reason, expires_at, rejected, skipped
FROM asyncjobs.flag_rules WHERE ($1::text IS NULL OR job = $1)
  AND (expires_at IS NULL OR expires_at > now())
ORDER BY job, id
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
        self._reload = False  # a reload was asked for during the load in flight
        self._flusher: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[None] | None = None
        self._listener: Any = None
        self._ttl_only = False  # no session to LISTEN on (a transaction pooler): the TTL alone
        self._unavailable = False
        self._no_rules_table = False
        self._counts: Counter[tuple[str, str]] = Counter()
        self._flushing = asyncio.Lock()
        self._rule_counts: Counter[tuple[int, str]] = Counter()
        self._any_rules = False
        self._own: dict[str, builtins.list[Rule]] = {}
        self._everywhere: builtins.list[Rule] = []
        self._matchers: dict[str, Matcher | None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._waking: asyncio.Future[None] | None = None
        self._ending: asyncio.Future[None] | None = None
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

    def check(
        self, spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool | Rule | None:
        """What stops this call of ``spec``'s job, from the cache: ``True`` (its flag is
        on), the first :class:`~asyncjobs._rules.Rule` its arguments match, ``False``
        (nothing: it runs), or ``None`` when the snapshot is stale. No I/O.

        Without any rule loaded this is :meth:`cached` and one attribute read; the
        arguments are only looked at when a rule applies to the job."""
        if time.monotonic() < self._fresh_until:
            snapshot = self._snapshot
            if snapshot is None:
                return self.fail_closed
            if spec.flag in snapshot:
                return True
            if not self._any_rules:
                return False
            return self._match(spec, args, kwargs)
        return None

    def _match(self, spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Rule | bool:
        matchers = self._matchers
        try:
            matcher = matchers[spec.name]
        except KeyError:
            own = self._own.get(spec.name, ())
            matcher = matchers[spec.name] = compile_rules(spec, own, self._everywhere)
        if matcher is None:
            return False
        return matcher.match(args, kwargs) or False

    async def decide(
        self, spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool | Rule:
        """:meth:`check`, loading the snapshot first when it is stale (one shared load)."""
        verdict = self.check(spec, args, kwargs)
        if verdict is not None:
            return verdict
        await self.refresh()
        snapshot = self._snapshot
        if snapshot is None:
            return self.fail_closed
        if spec.flag in snapshot:
            return True
        return self._match(spec, args, kwargs) if self._any_rules else False

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
        self._flush_later()

    def count_rule(self, rule: Rule, kind: str) -> None:
        """:meth:`count`, for an argument rule (kept on the rule's row)."""
        self._rule_counts[(rule.id, kind)] += 1
        self._flush_later()

    def _flush_later(self) -> None:
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
        if not self._counts and not self._rule_counts:
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
        self._reload = False
        pool: Any = None
        conn: Any = None
        try:
            async with asyncio.timeout(self.timeout):
                pool = await self._app.db()
                conn = await pool.acquire()
                self.loads += 1
                flags, rules = await self._read(conn)
                loaded_controls = await _load_controls(conn)
                try:
                    await self._flush_counts(conn)
                except asyncpg.PostgresError as exc:  # counts kept; the snapshot is good
                    _log.warning(logs.FLAGS_UNAVAILABLE, error=f"counts not saved: {exc}")
            loaded = {r["name"] for r in flags if not r["ended"]}
            for name, value in self._changes.items():
                if value:
                    loaded.add(name)
                else:
                    loaded.discard(name)
            self._install(
                frozenset(loaded), [writes.rule_of_row(r) for r in rules if not r["ended"]]
            )
            self._set_controls(loaded_controls)
            over = any(r["ended"] for r in flags) or any(r["ended"] for r in rules)
            if over and (self._ending is None or self._ending.done()):
                # Read as off above; recorded (once, by one process) apart from this
                # load, so a slow write never holds up the callers waiting on it.
                self._ending = asyncio.ensure_future(self._end_apart())
            ends = [r["expires_at"] for r in [*flags, *rules] if r["expires_at"] and not r["ended"]]
            now = time.monotonic()
            fresh = now + self.ttl
            if ends:  # the cache goes stale, and a timer loads, when the first one ends
                until_end = (min(ends) - [*flags, *rules][0]["db_now"]).total_seconds()
                self._wake_at(until_end)
                fresh = min(fresh, now + max(until_end, 0.0))
            if self._reload:  # told of a change while reading: read again, soon
                self._fresh_until = 0.0
                self._wake_at(0.0)
            else:
                self._fresh_until = fresh
            if self._unavailable:
                self._unavailable = False
                _log.info(logs.FLAGS_RECOVERED)
            if (
                self._listener is None
                and not self._ttl_only
                and (self._listening is None or self._listening.done())
            ):
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

    async def _read(self, conn: Any) -> tuple[builtins.list[Any], builtins.list[Any]]:
        """The enabled flags and the rules, each row with ``ended`` (its timed stop is over).
        On a schema without migration 0005, the flags alone (said once)."""
        if not self._no_rules_table:
            try:
                return await conn.fetch(_LOAD_FLAGS_SQL), await conn.fetch(_LOAD_RULES_SQL)
            except (asyncpg.UndefinedColumnError, asyncpg.UndefinedTableError) as exc:
                self._no_rules_table = True
                _log.warning(
                    logs.FLAGS_UNAVAILABLE,
                    error=f"argument rules and timed stops unavailable ({exc}): "
                    "run `asyncjobs migrate`",
                    serving="whole-job flags",
                )
        rows = await conn.fetch("SELECT name FROM asyncjobs.flags WHERE enabled")
        return [{"name": r[0], "ended": False, "expires_at": None} for r in rows], []

    def _install(self, snapshot: frozenset[str], rules: builtins.list[Rule]) -> None:
        own: dict[str, builtins.list[Rule]] = {}
        everywhere: builtins.list[Rule] = []
        for rule in rules:
            if rule.job == ALL_JOBS:
                everywhere.append(rule)
            else:
                own.setdefault(rule.job, []).append(rule)
        self._own, self._everywhere, self._matchers = own, everywhere, {}
        self._any_rules = bool(rules)
        self._snapshot = snapshot

    def _wake_at(self, delay: float) -> None:
        """Load again in ``delay`` seconds: when the next timed stop ends, so it ends on
        time in a process that reads no flag then (an idle worker; the load records the
        end, once among all processes), or at once after a change notification."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(max(delay, 0.0) + 0.01, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._fresh_until = 0.0
        self._waking = asyncio.ensure_future(self.refresh())

    async def _end_apart(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout, _END_TIMEOUT_S)):
                pool = await self._app.db()
                async with pool.acquire() as conn:
                    await writes.end_timed_stops(conn)
        except Exception as exc:  # the next load that finds them over tries again
            _log.warning(logs.FLAGS_UNAVAILABLE, error=f"timed stops not ended yet: {exc}")

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
        # One flush at a time: a caller that flushes before it reads the counters
        # (list(), rules()) waits for a flush already writing, and so reads its counts.
        async with self._flushing:
            await self._write_counts(conn)

    async def _write_counts(self, conn: Any) -> None:
        if self._counts:
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
        if self._rule_counts:
            ruled, self._rule_counts = self._rule_counts, Counter()
            ids = sorted({rule_id for rule_id, _ in ruled})
            try:
                await conn.execute(
                    _FLUSH_RULES_SQL,
                    ids,
                    [ruled[(i, "rejected")] for i in ids],
                    [ruled[(i, "skipped")] for i in ids],
                )
            except BaseException:
                self._rule_counts.update(ruled)
                raise

    async def _listen(self) -> None:
        """Subscribe to change notifications on a dedicated connection (best effort).

        It needs a session of its own (:meth:`~asyncjobs.App.session_url`): through a
        transaction pooler without ``ASYNCJOBS_DATABASE_LISTEN_URL`` there is none, and
        the TTL alone bounds how long a change takes (the App logged that at start).
        """
        conn: Any = None
        try:
            async with asyncio.timeout(self._app.settings.database_timeout):
                url = await self._app.session_url("flag change notifications")
            if url is None:
                self._ttl_only = True
                return
            async with asyncio.timeout(self.timeout):
                conn = await asyncpg.connect(url)
                await conn.add_listener(CHANNEL, self._notified)
            conn.add_termination_listener(self._listener_lost)
        except BaseException as exc:  # cancelled by close() too: never leave it open
            if conn is not None:
                conn.terminate()
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, ConfigurationError):  # trying again would say the same
                self._ttl_only = True
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
        if not name:  # RELOAD: rules or a timed stop changed; load now, to know its end
            self._reload = True
            self._fresh_until = 0.0
            if self._changes is None:  # else the load in flight reads again when done
                self._wake_at(0.0)
            return
        if self._changes is not None:
            self._changes[name] = value == "1"
        snapshot = self._snapshot
        if snapshot is None:
            self._fresh_until = 0.0  # nothing to patch: load on next read
            return
        self._snapshot = snapshot | {name} if value == "1" else snapshot - {name}

    def _listener_lost(self, _conn: Any) -> None:
        self._listener = None
        self._fresh_until = 0.0  # changes may have been missed: reload on next read

    def _stale(self) -> None:
        """Load again at the next read (a rule or an end changed here)."""
        self._reload = True
        self._fresh_until = 0.0

    # -- the operator's side ---------------------------------------------

    async def enable(
        self,
        name: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        until: datetime | timedelta | None = None,
    ) -> FlagChange:
        """Turn flag ``name`` on (for ``disable_<job>``: stop that job). Recorded in history.

        ``until`` (a timedelta from now, or an aware datetime) makes it a timed stop: the
        flag turns itself off then, recorded as done by ``schedule``. Enabling a flag that
        is on with another end (or none) changes its end. :class:`FlagRuleError` for an
        end of zero or in the past."""
        return await self._set(name, True, actor, reason, end_of(until))

    async def disable(
        self, name: str, *, actor: str | None = None, reason: str | None = None
    ) -> FlagChange:
        """Turn flag ``name`` off. Recorded in history."""
        return await self._set(name, False, actor, reason, None)

    async def _set(
        self, name: str, value: bool, actor: str | None, reason: str | None, ends: datetime | None
    ) -> FlagChange:
        check_flag_name(name)
        who = actor or default_actor()
        pool = await self._app.db()
        async with pool.acquire() as conn:
            old, old_end = await writes.set_flag(conn, name, value, who, reason, ends)
        if old is value and old_end == ends:
            return FlagChange(name, old, value, changed=False, expires_at=old_end)
        if self._changes is not None:
            self._changes[name] = value
        snapshot = self._snapshot
        if snapshot is not None:  # this process need not wait for its own notification
            self._snapshot = snapshot | {name} if value else snapshot - {name}
        if ends is not None or old_end is not None:
            self._stale()  # learn the end, to end it on time
        about: dict[str, Any] = {"until": ends.isoformat()} if ends is not None else {}
        _log.info(
            logs.FLAG_CHANGED, flag=name, old=old, new=value, actor=who, reason=reason, **about
        )
        return FlagChange(name, old, value, changed=True, expires_at=ends)

    async def disable_where(
        self,
        job: Any,
        *where: str | Condition,
        actor: str | None = None,
        reason: str | None = None,
        until: datetime | timedelta | None = None,
        **equals: Any,
    ) -> RuleChange:
        """Stop only the jobs of ``job`` whose arguments match: an argument rule.

        ``job`` is a job (name, function or class) or ``"*"`` for every job class whose
        signature has the rule's arguments. The conditions, all of which must hold, are
        texts (``"amount>100"``, ``"region in (eu, us)"``) and keywords (``customer_id=42``;
        a list means ``in``); an argument named like an option here (``actor``,
        ``reason``, ``until``) is given as text. ``until`` ends the rule by itself.

        Checked before anything is stored (:class:`FlagRuleError`, one line naming the
        part): each argument is one the job's signature has (from the registry; with
        ``"*"``, one registered job at least takes them all), the conditions are well
        formed, the end is after now. The rule and its audit row are written in one
        transaction. Adding a rule that is there already changes nothing (or only its end).
        """
        name, conds = self._rule_of(job, where, equals)
        text = rule_text(conds)
        ends = end_of(until)
        who = actor or default_actor()
        flag = STOP_FLAG_PREFIX + name
        pool = await self._app.db()
        async with pool.acquire() as conn:
            old = await writes.add_rule(conn, name, to_json(conds), text, who, reason, ends)
        if old is True:
            return RuleChange(name, text, added=True, changed=False, expires_at=ends)
        old = old or None
        self._stale()
        about: dict[str, Any] = {"until": ends.isoformat()} if ends is not None else {}
        _log.info(
            logs.FLAG_CHANGED,
            flag=flag,
            rule=text,
            old=old,
            new=True,
            actor=who,
            reason=reason,
            **about,
        )
        return RuleChange(name, text, added=True, changed=True, expires_at=ends)

    async def enable_where(
        self,
        job: Any,
        *where: str | Condition,
        actor: str | None = None,
        reason: str | None = None,
        **equals: Any,
    ) -> RuleChange:
        """Remove the argument rule of ``job`` with these conditions (as given to
        :meth:`disable_where`, in any order): its jobs run again. Recorded in history.
        ``changed`` is ``False`` when no such rule is in force (:meth:`rules` lists them)."""
        name, conds = self._rule_of(job, where, equals, check=False)
        text = rule_text(conds)
        who = actor or default_actor()
        flag = STOP_FLAG_PREFIX + name
        pool = await self._app.db()
        async with pool.acquire() as conn:
            if not await writes.remove_rule(conn, name, text, who, reason):
                return RuleChange(name, text, added=False, changed=False)
        self._stale()
        _log.info(
            logs.FLAG_CHANGED, flag=flag, rule=text, old=True, new=False, actor=who, reason=reason
        )
        return RuleChange(name, text, added=False, changed=True)

    def _rule_of(
        self,
        job: Any,
        where: tuple[str | Condition, ...],
        equals: dict[str, Any],
        *,
        check: bool = True,
    ) -> tuple[str, tuple[Condition, ...]]:
        """The job's name (or ``"*"``) and the rule's conditions, checked against the
        registry's signatures."""
        conds = conditions(where, equals)
        registry = self._app.registry
        if job == ALL_JOBS:
            names = {c.arg for c in conds}
            if check and not any(takes(spec, names) for spec in registry):
                listed = ", ".join(sorted(names))
                raise FlagRuleError(
                    f"no registered job takes {listed}: a rule on every job would stop "
                    "nothing (import the job modules: ASYNCJOBS_IMPORTS); nothing was stored"
                )
            return ALL_JOBS, conds
        spec = registry.resolve(job)
        if check:
            check_arguments(spec, conds)
        return spec.name, conds

    async def rules(self, job: str | None = None) -> builtins.list[Rule]:
        """The argument rules in force (of ``job``'s name, or ``"*"``, if given), with
        their counters (pending counts flushed first), by job then age."""
        pool = await self._app.db()
        async with pool.acquire() as conn:
            await self._flush_counts(conn)
            rows = await conn.fetch(_RULES_SQL, job)
        return [writes.rule_of_row(r) for r in rows]

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
        """Every flag with its state, last change and counters (pending counts flushed
        first; timed stops that are over ended first)."""
        pool = await self._app.db()
        async with pool.acquire() as conn:
            await writes.end_timed_stops(conn)
            await self._flush_counts(conn)
            rows = await conn.fetch(_LIST_SQL)
        return [Flag(**dict(r)) for r in rows]

    async def history(
        self, name: str | None = None, *, limit: int = 100
    ) -> builtins.list[FlagEvent]:
        """Changes, newest first; of one flag if ``name`` is given (``disable_*``: the
        rules on every job class; ``pause:<queue>``, ``throttle:<job>``: a control)."""
        if name is not None and name != ALL_JOBS_FLAG and not controls.is_control_entry(name):
            check_flag_name(name)
        pool = await self._app.db()
        rows = await pool.fetch(
            "SELECT name, old_value, new_value, actor, reason, at, rule, expires_at, detail "
            "FROM asyncjobs.flag_history "
            "WHERE $1::text IS NULL OR name = $1 ORDER BY at DESC, id DESC LIMIT $2",
            name,
            limit,
        )
        return [FlagEvent(**dict(r)) for r in rows]

    async def close(self) -> None:
        """Flush pending counts (best effort) and close the notification connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ending, self._ending = self._ending, None
        if ending is not None and not ending.done():  # let it record what it ends
            with contextlib.suppress(Exception):
                await ending
        waking, self._waking = self._waking, None
        if waking is not None and not waking.done():
            waking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waking
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
        if (self._counts or self._rule_counts) and self._app.has_db():
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
